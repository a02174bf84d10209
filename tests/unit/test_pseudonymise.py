"""Pseudonyms from the province key, pure Python."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
import re

import pytest
from pydantic import SecretStr

from lakehouse.pseudonyms import ProvinceKey, person_key, pseudo_uid
from lakehouse.settings import Settings

# RFC 4231 HMAC-SHA256 test cases: (key, data, expected MAC). Case 6 and 7 use a 131-byte key,
# longer than the 64-byte block, which HMAC must hash first.
RFC4231 = [
    (b"\x0b" * 20, "Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (
        b"Jefe",
        "what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 131,
        "Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        "This is a test using a larger than block-size key and a larger than "
        "block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # the contracts' UID pattern
KEY = ProvinceKey(secret=b"test-province-key", version=1)


@pytest.mark.parametrize(("secret", "data", "expected"), RFC4231)
def test_person_key_matches_rfc4231(secret: bytes, data: str, expected: str) -> None:
    assert person_key(ProvinceKey(secret=secret, version=1), data) == expected


@pytest.mark.parametrize("secret", [b"k", b"x" * 64, b"y" * 65, "省级密钥".encode(), bytes(range(256))])
def test_person_key_is_hmac_sha256_of_the_utf8_id(secret: bytes) -> None:
    key = ProvinceKey(secret=secret, version=1)
    for value in ("11010519491231002X", "", "张三", "ä\u0301😀"):
        expected = hmac.new(secret, value.encode("utf-8"), hashlib.sha256).hexdigest()
        got = person_key(key, value)
        assert got == expected
        assert re.fullmatch(r"[0-9a-f]{64}", got)


def test_different_keys_give_unrelated_person_keys() -> None:
    rid = "41010219900101001X"
    old = ProvinceKey(secret=b"province-key-2025", version=1)
    new = ProvinceKey(secret=b"province-key-2026", version=2)
    assert person_key(old, rid) != person_key(new, rid)
    same_as_old = ProvinceKey(secret=b"province-key-2025", version=1)
    assert person_key(old, rid) == person_key(same_as_old, rid)


def _independent_pseudo_uid(secret: bytes, uid: str) -> str:
    mac = hmac.new(secret, b"uid:" + uid.encode("utf-8"), hashlib.sha256).digest()
    return "2.25." + str(int(mac[:15].hex(), 16))


def test_pseudo_uid_is_a_consistent_dicom_uid() -> None:
    rng = random.Random(3)
    for _ in range(500):
        uid = "1.2.826.0.1.3680043." + ".".join(str(rng.randrange(10**6)) for _ in range(4))
        got = pseudo_uid(KEY, uid)
        assert got == _independent_pseudo_uid(KEY.secret, uid)
        assert got == pseudo_uid(KEY, uid)
        assert len(got) <= 64
        assert UID_PATTERN.fullmatch(got)
        # DICOM forbids leading zeros in a UID component.
        assert all(part == "0" or not part.startswith("0") for part in got.split("."))
        assert int(got[5:]) < 2**120


def test_pseudo_uid_and_person_key_are_domain_separated() -> None:
    value = "1.2.3"
    mac = bytes.fromhex(person_key(KEY, value))
    assert pseudo_uid(KEY, value) != "2.25." + str(int.from_bytes(mac[:15], "big"))


def test_province_key_repr_hides_the_secret() -> None:
    key = ProvinceKey(secret=b"s3cr3t-value", version=4)
    assert "s3cr3t" not in repr(key) and "s3cr3t" not in str(key)
    assert "4" in repr(key)


def test_province_key_from_settings() -> None:
    settings = Settings(province_key=SecretStr("来自设置的密钥"), province_key_version=3)
    key = ProvinceKey.from_settings(settings)
    assert key == ProvinceKey(secret="来自设置的密钥".encode(), version=3)


@pytest.mark.parametrize(("secret", "version"), [(b"", 1), (b"k", 0), (b"k", -1), (b"k", True)])
def test_province_key_refuses_bad_values(secret: bytes, version: int) -> None:
    with pytest.raises(ValueError):
        ProvinceKey(secret=secret, version=version)


def test_province_key_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        KEY.version = 2  # type: ignore[misc]
