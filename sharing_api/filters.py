"""The typed filter language of dataset queries: `{column, op, value}` triples, never SQL text.

Each value is checked against the column's Arrow type before anything runs; the result is a
pyarrow compute expression. Masked and hidden columns cannot be filtered on: a filter on a masked
column would reveal the values the mask withholds, one guess at a time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from sharing_api.errors import Unprocessable

Op = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "is_null", "not_null", "starts_with"]
Scalar = str | int | float | bool | None


class Filter(BaseModel):
    """One condition. `in`/`not_in` take a list; `is_null`/`not_null` take no value."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(min_length=1, max_length=128)
    op: Op
    value: Scalar | list[Scalar] = None


def _coerce(value: Any, kind: pa.DataType, column: str) -> Any:
    def bad(expected: str) -> Unprocessable:
        # The value is never echoed: it could be anything, a resident ID included.
        return Unprocessable(f"filter on {column!r}: expected {expected}", code="invalid_filter")

    if value is None:
        raise bad("a value")
    if pa.types.is_string(kind):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if pa.types.is_integer(kind):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if pa.types.is_floating(kind):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        try:
            return float(value)
        except OverflowError:
            raise bad("a number within the float range") from None
    if pa.types.is_boolean(kind):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if pa.types.is_date(kind):
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise bad("a date YYYY-MM-DD") from None
    if pa.types.is_timestamp(kind):
        try:
            parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise bad("an ISO 8601 time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    raise bad(f"a {kind}")


def _arrow(make: Any, values: Any, kind: pa.DataType, column: str) -> Any:
    """`pa.scalar`/`pa.array` of checked values; 422 when one does not fit the column's type (an
    integer beyond int32/int64, a string that is not valid UTF-8)."""
    try:
        return make(values, kind)
    except (pa.ArrowInvalid, OverflowError, UnicodeEncodeError) as exc:
        raise Unprocessable(
            f"filter on {column!r}: a value does not fit the column's type {kind}", code="invalid_filter"
        ) from exc


def expression(
    filters: list[Filter], schema: pa.Schema, filterable: set[str], masked: set[str]
) -> pc.Expression | None:
    """The conjunction of `filters` over `schema`, or None for no filter. Column names are echoed
    only when the caller can see the column: a hidden one and one that does not exist get the
    same answer."""
    result: pc.Expression | None = None
    for f in filters:
        if f.column in masked:
            raise Unprocessable(
                f"column {f.column!r} is masked for you and cannot be filtered on", code="invalid_filter"
            )
        if f.column not in filterable:
            raise Unprocessable("a filter names no column you may filter on", code="invalid_filter")
        kind = schema.field(f.column).type
        field = pc.field(f.column)
        if f.op in ("is_null", "not_null"):
            if f.value is not None:
                raise Unprocessable(f"filter {f.op} on {f.column!r} takes no value", code="invalid_filter")
            cond = field.is_null() if f.op == "is_null" else field.is_valid()
        elif f.op in ("in", "not_in"):
            if not isinstance(f.value, list) or not f.value or len(f.value) > 1000:
                raise Unprocessable(
                    f"filter {f.op} on {f.column!r} takes a list of 1-1000 values", code="invalid_filter"
                )
            values = _arrow(pa.array, [_coerce(v, kind, f.column) for v in f.value], kind, f.column)
            cond = field.isin(values)
            if f.op == "not_in":
                cond = ~cond
        else:
            if isinstance(f.value, list):
                raise Unprocessable(f"filter {f.op} on {f.column!r} takes one value", code="invalid_filter")
            value = _arrow(pa.scalar, _coerce(f.value, kind, f.column), kind, f.column)
            if f.op == "starts_with":
                if not pa.types.is_string(kind):
                    raise Unprocessable(
                        f"starts_with needs a text column; {f.column!r} is {kind}", code="invalid_filter"
                    )
                cond = pc.starts_with(field, pattern=value.as_py())
            else:
                cond = {
                    "eq": field == value,
                    "ne": field != value,
                    "lt": field < value,
                    "le": field <= value,
                    "gt": field > value,
                    "ge": field >= value,
                }[f.op]
        result = cond if result is None else result & cond
    return result
