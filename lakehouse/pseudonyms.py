"""Pseudonyms made with the province key: person keys for resident IDs, pseudo-UIDs for DICOM UIDs.

Only ~10^11 plausible resident IDs exist, so an unkeyed hash could be reversed by enumeration;
HMAC-SHA256 with a province-held key cannot. The key version is stored beside each pseudonym so
the key can be rotated. The Spark column versions are in `ingestion.pseudonymise_spark`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from lakehouse.settings import Settings

# Bytes of the HMAC that make the pseudo-UID's integer. 15 bytes (120 bits) rather than the 16 of
# a UUID-derived 2.25 UID: 2^120 - 1 has 37 decimal digits and fits Spark's DECIMAL(38,0), which
# the Spark version needs to print the same integer, while 2^128 - 1 (39 digits) overflows it.
# 120 bits still make a collision among 10^12 UIDs about 10^-13 likely.
UID_BYTES = 15
UID_ROOT = "2.25."
# Domain separation: a UID and a resident ID with the same text get unrelated pseudonyms.
UID_PREFIX = b"uid:"


@dataclass(frozen=True)
class ProvinceKey:
    """The province's pseudonymisation key and its version; its repr never shows the secret."""

    secret: bytes = field(repr=False)
    version: int

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the province key must not be empty")
        if isinstance(self.version, bool) or self.version < 1:
            raise ValueError(f"the province key version must be a positive int, got {self.version!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ProvinceKey:
        return cls(
            secret=settings.province_secret.get_secret_value().encode("utf-8"),
            version=settings.province_key_version,
        )


def _hmac(key: ProvinceKey, message: bytes) -> bytes:
    return hmac.new(key.secret, message, hashlib.sha256).digest()


def person_key(key: ProvinceKey, resident_id: str) -> str:
    """Lower-case hex HMAC-SHA256(province key, resident ID as UTF-8): 64 characters."""
    return _hmac(key, resident_id.encode("utf-8")).hex()


def pseudo_uid(key: ProvinceKey, uid: str) -> str:
    """A consistent DICOM UID replacement (PS3.15 Annex E): 2.25.<integer from the HMAC>.

    Every city holding the same key maps the same study to the same pseudo-UID. The integer has
    no leading zeros (a DICOM UID rule) and at most 37 digits, so the UID is at most 42 characters.
    """
    digest = _hmac(key, UID_PREFIX + uid.encode("utf-8"))
    return UID_ROOT + str(int.from_bytes(digest[:UID_BYTES], "big"))
