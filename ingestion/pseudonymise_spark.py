"""`person_key` and `pseudo_uid` as Spark column expressions, in pure Spark SQL (no Python UDF).

Spark has SHA-256 (`sha2`) but no HMAC, so HMAC is built from its definition (RFC 2104):
    HMAC(K, m) = H((K' xor opad) || H((K' xor ipad) || m))
where K' is the key, first hashed if longer than the 64-byte SHA-256 block, then zero-padded to
it. The padded keys are computed here in Python and enter the plan as literals.

Caution: K' xor ipad reveals the key to anyone who sees the query plan (EXPLAIN output, the
Spark UI, event logs). Sessions running these expressions should keep those private or redact
them with `spark.sql.redaction.string.regex`.
"""

from __future__ import annotations

import hashlib

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.pseudonyms import UID_BYTES, UID_PREFIX, UID_ROOT, ProvinceKey

_BLOCK = 64  # SHA-256 block size in bytes
_TWO_POW_64 = str(2**64)


def _padded_keys_hex(secret: bytes) -> tuple[str, str]:
    """(K' xor ipad, K' xor opad) as hex strings."""
    if len(secret) > _BLOCK:
        secret = hashlib.sha256(secret).digest()
    padded = secret.ljust(_BLOCK, b"\x00")
    inner = bytes(b ^ 0x36 for b in padded)
    outer = bytes(b ^ 0x5C for b in padded)
    return inner.hex(), outer.hex()


def _hmac_hex(key: ProvinceKey, message: Column) -> Column:
    """Lower-case hex HMAC-SHA256 of a binary column; null in, null out."""
    inner_hex, outer_hex = _padded_keys_hex(key.secret)
    inner = F.sha2(F.concat(F.unhex(F.lit(inner_hex)), message), 256)
    return F.sha2(F.concat(F.unhex(F.lit(outer_hex)), F.unhex(inner)), 256)


def person_key_col(key: ProvinceKey, col: Column) -> Column:
    """HMAC-SHA256(province key, UTF-8 of a string column) as lower-case hex, like `person_key`."""
    return _hmac_hex(key, col.cast("binary"))


def hex120_to_decimal_col(hex_col: Column) -> Column:
    """The decimal digits of a 30-hex-digit (120-bit) unsigned integer, without leading zeros.

    `conv(…, 16, 10)` is exact only up to 64 bits, so the number is split into a 56-bit high
    part (14 hex digits) and a 64-bit low part (16 hex digits) and recombined as
    high * 2^64 + low in DECIMAL(38,0), which holds any 120-bit value (at most 37 digits).
    """
    decimal = "decimal(38,0)"
    high = F.conv(F.substring(hex_col, 1, 14), 16, 10).cast(decimal)
    low = F.conv(F.substring(hex_col, 15, 16), 16, 10).cast(decimal)
    value = (high * F.lit(_TWO_POW_64).cast(decimal) + low).cast(decimal)
    return value.cast("string")


def pseudo_uid_col(key: ProvinceKey, col: Column) -> Column:
    """2.25.<integer of the HMAC's first 15 bytes> of a UID column, like `pseudo_uid`."""
    digest = _hmac_hex(key, F.concat(F.unhex(F.lit(UID_PREFIX.hex())), col.cast("binary")))
    return F.concat(F.lit(UID_ROOT), hex120_to_decimal_col(F.substring(digest, 1, 2 * UID_BYTES)))
