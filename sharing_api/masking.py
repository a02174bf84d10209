"""Column policy applied to Arrow data before it leaves the server.

- hidden: the column is dropped (and callers cannot filter on it, or learn it exists);
- masked: text becomes a keyed token (`~` + 16 hex of HMAC(mask key, grant:column:value)) that is
  equal for equal values within one grant, so a researcher can still count and join, but cannot
  recover the value or link it across grants; dates and times keep only their month; numbers and
  flags become null.
"""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa
import pyarrow.compute as pc

from sharing_api.grants import ColumnPolicy
from sharing_api.order import shuffle_key

MASK_PREFIX = "~"


class Masker:
    def __init__(self, secret: bytes):
        # Derived, so the province key itself never touches masking.
        self._key = hmac.new(secret, b"medshare-api-mask", hashlib.sha256).digest()

    def order_key(self, grant_id: str, *parts: str) -> bytes:
        """The key of a masked result's shuffled order (sharing_api.order)."""
        return shuffle_key(self._key, grant_id, *parts)

    def token(self, grant_id: str, column: str, value: str) -> str:
        digest = hmac.new(self._key, f"{grant_id}:{column}:{value}".encode(), hashlib.sha256).hexdigest()
        return MASK_PREFIX + digest[:16]

    def apply(self, table: pa.Table, policy: ColumnPolicy, grant_id: str) -> pa.Table:
        if not policy.masked and not policy.hidden:
            return table
        keep = [n for n in table.column_names if policy.access(n) != "hidden"]
        table = table.select(keep)
        for i, name in enumerate(table.column_names):
            if policy.access(name) == "masked":
                table = table.set_column(i, name, self._mask(table[name], grant_id, name))
        return table

    def _mask(self, values: pa.ChunkedArray, grant_id: str, column: str) -> pa.Array | pa.ChunkedArray:
        kind = values.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            distinct = pc.unique(values)
            tokens = pa.array(
                [None if v is None else self.token(grant_id, column, v) for v in distinct.to_pylist()],
                pa.string(),
            )
            return pc.take(tokens, pc.index_in(values, value_set=distinct))
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            return pc.floor_temporal(values, unit="month")
        return pa.nulls(len(values), kind)
