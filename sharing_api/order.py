"""A keyed pseudo-random order for results whose person keys are masked.

The read model keeps every part sorted by the real person_key (a lookup is a binary search).
Served in that order, a research result — person keys masked — lines up row for row with any
result that shows clear keys (an operations query filtered the same way), and zipping the two
maps each token back to its key. So a masked result is served in a shuffled order: page rows are
taken at positions `permutation(offset) … permutation(offset + limit - 1)` of a keyed permutation
of [0, n). A small Feistel network over the next power of two, with cycle walking into [0, n),
gives the positions of one page without sorting or holding the whole order: O(limit) a page.

The key is secret (derived from the API's masking secret) and per grant and query, so a recipient
can neither undo the shuffle nor line two masked results up with each other.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

_ROUNDS = 6
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = (x ^ (x >> np.uint64(31))) & _MASK64
        return mixed


class Shuffle:
    """A permutation of [0, n) chosen by `key`."""

    def __init__(self, key: bytes, n: int) -> None:
        self.n = n
        bits = max(2, int(n - 1).bit_length() if n > 1 else 2)
        bits += bits % 2  # two equal halves
        self._half = bits // 2
        self._low = np.uint64((1 << self._half) - 1)
        digest = hashlib.sha512(key).digest()
        self._keys = [np.uint64(int.from_bytes(digest[8 * r : 8 * r + 8], "little")) for r in range(_ROUNDS)]

    def _permute(self, x: np.ndarray) -> np.ndarray:
        half, low = np.uint64(self._half), self._low
        left, right = x >> half, x & low
        for k in self._keys:
            left, right = right, left ^ (_mix(right ^ k) & low)
        return (left << half) | right

    def positions(self, start: int, count: int) -> np.ndarray:
        """The permuted positions of [start, start + count) ∩ [0, n), in that order."""
        stop = min(start + count, self.n)
        if stop <= start:
            return np.empty(0, np.int64)
        x = self._permute(np.arange(start, stop, dtype=np.uint64))
        # Cycle walking: a value past n is permuted again until it lands inside; the domain is
        # under 4n, so few values need more than a pass or two.
        outside = x >= np.uint64(self.n)
        while outside.any():
            x[outside] = self._permute(x[outside])
            outside = x >= np.uint64(self.n)
        return x.astype(np.int64)


def shuffle_key(secret: bytes, *parts: str) -> bytes:
    """The key of one result's order: the API's secret, the grant, the query."""
    return hmac.new(secret, "\x1f".join(("medshare-order", *parts)).encode(), hashlib.sha256).digest()
