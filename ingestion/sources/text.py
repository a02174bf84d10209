"""Bytes of an export → UTF-8: the encoding found (or declared), transcoded as a stream, hashed.

Chinese hospital systems export GB18030 (or its subset GBK) by default, Windows tools put a
byte-order mark before UTF-8, everything else is UTF-8. `detect_encoding` decides from the first
megabyte; `Utf8Stream` transcodes the rest on the fly, so readers (pyarrow's CSV reader, the JSON
Lines reader) always see valid UTF-8. Bytes that are not valid in the encoding never stop a file:
each becomes U+FFFD and is counted, so a reader can tell with one comparison whether a file had
any, and only then look for the records holding them (quarantined as `undecodable`).
"""

from __future__ import annotations

import codecs
import hashlib
import io
from typing import BinaryIO

HEAD_BYTES = 1 << 20
UTF8, UTF8_BOM, GB18030 = "utf-8", "utf-8-sig", "gb18030"
_BOMS = ((codecs.BOM_UTF8, UTF8_BOM), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# Python's name for each encoding a profile may declare.
CODECS = {"utf-8": UTF8, "utf-8-sig": UTF8_BOM, "gb18030": GB18030, "gbk": "gbk"}
REPLACEMENT = "\ufffd"

# Undecodable bytes met by this process (one counter: a Python worker reads one file at a time).
_errors = [0]


def _counted_replace(exc: UnicodeError) -> tuple[str, int]:
    _errors[0] += 1
    return "\ufffd", exc.end  # type: ignore[attr-defined]


codecs.register_error("medshare-replace", _counted_replace)


def decode_errors() -> int:
    """How many undecodable byte sequences this process has met so far."""
    return _errors[0]


class NotText(ValueError):
    """The bytes are not text in any encoding we read; the message says why."""


def _errors_in(head: bytes, encoding: str, *, complete: bool) -> int:
    """Undecodable sequences in `head`; a character cut by the end of `head` is fine unless the
    head is the whole file."""
    found = [0]

    def count(exc: UnicodeError) -> tuple[str, int]:
        found[0] += 1
        return "\ufffd", exc.end  # type: ignore[attr-defined]

    codecs.register_error("medshare-detect", count)
    codecs.getincrementaldecoder(encoding)("medshare-detect").decode(head, final=complete)
    return found[0]


def detect_encoding(head: bytes, *, complete: bool) -> str:
    """The encoding of a file that starts with `head` (`complete`: head is the whole file):
    UTF-8 when it decodes without an error, else GB18030 when that fits far better (a damaged
    record is quarantined, not the file), else none."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    if b"\x00" in head[:65536]:
        raise NotText("binary content (NUL bytes) in a text export")
    utf8 = _errors_in(head, UTF8, complete=complete)
    if utf8 == 0:
        return UTF8
    gb = _errors_in(head, GB18030, complete=complete)
    if gb * 4 <= utf8:
        return GB18030
    raise NotText(
        f"neither UTF-8 nor GB18030 text ({utf8} and {gb} undecodable sequences in the first "
        f"{len(head)} bytes); declare the file's encoding in platform/sources.yaml"
    )


def read_head(raw: BinaryIO | io.RawIOBase, size: int = HEAD_BYTES) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = raw.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Counting(io.RawIOBase):
    """Hashes (SHA-256) and counts the bytes read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class Utf8Stream(io.RawIOBase):
    """A readable stream of UTF-8 bytes transcoded from a file in `encoding`; `sha256` and
    `size` are those of the original bytes read so far."""

    def __init__(self, source: _Counting, head: bytes, encoding: str) -> None:
        self._source = source
        self._head: bytes | None = head
        self._decoder = codecs.getincrementaldecoder(encoding)("medshare-replace")
        self._out = memoryview(b"")
        self._done = False
        self.encoding = encoding

    @property
    def sha256(self) -> hashlib._Hash:
        return self._source.sha256

    @property
    def size(self) -> int:
        return self._source.size

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._out and not self._done:
            if self._head is not None:
                data, self._head = self._head, None
            else:
                data = self._source.read(1 << 20) or b""
            if not data:
                self._done = True
            text = self._decoder.decode(data, final=not data)
            self._out = memoryview(text.encode(UTF8))

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._fill()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def drain(self) -> None:
        """Read (and hash) whatever is left, e.g. after a reader stopped early."""
        while self.read(1 << 20):
            pass


def open_utf8(raw: BinaryIO, declared: str) -> Utf8Stream:
    """The file as UTF-8 bytes without a byte-order mark. Raises NotText for an empty or binary
    file, or (with `declared="auto"`) one in no encoding we know."""
    source = _Counting(raw)
    head = read_head(source)
    complete = len(head) < HEAD_BYTES
    if not head.strip():
        raise NotText("empty file")
    encoding = detect_encoding(head, complete=complete) if declared == "auto" else CODECS[declared]
    if encoding == UTF8 and head.startswith(codecs.BOM_UTF8):
        encoding = UTF8_BOM  # the mark is not part of the first header name
    return Utf8Stream(source, head, encoding)


def undecodable(text: str) -> bool:
    """Whether text decoded by a Utf8Stream holds bytes that were not valid in its encoding."""
    return REPLACEMENT in text
