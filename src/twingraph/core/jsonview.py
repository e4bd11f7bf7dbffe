"""Values of other libraries as the JSON data they stand for, for what TwinGraph prints and
serves (``run --json``, ``dynamic execute``'s summary, REST outputs): a NumPy or pandas
number is a number, an array a list, a date its ISO text. They were printed as their
``repr`` (``"np.int64(275)"``): every pandas ``.sum()`` of an integer column, as text.

Duck-typed (no NumPy or pandas import here): a value with a ``dtype`` and ``tolist`` is an
array or an array scalar."""
from __future__ import annotations

import datetime
from typing import Any

#: Items of an array shown as a list; a larger one is shown by its ``repr`` (NumPy's own
#: summary), not as megabytes of numbers.
ARRAY_ITEMS_MAX = 10_000

NOT_PLAIN: Any = object()


def plain(value: Any) -> Any:
    """``value`` as JSON data if it is a date, a set, or a number or array of another
    library (the result may hold more such values: a ``datetime64``'s ``datetime``), else
    ``NOT_PLAIN``."""
    if isinstance(value, (datetime.date, datetime.time)):     # pandas' Timestamp too
        return value.isoformat()
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        size = getattr(value, "size", 1)
        if not isinstance(size, int) or size > ARRAY_ITEMS_MAX:
            return NOT_PLAIN
        try:
            if getattr(dtype, "kind", "") in ("M", "m"):     # datetime64, timedelta64: ISO
                # text (nanosecond ones became integers, ``tolist`` giving up on them)
                astype: Any = getattr(value, "astype", None)
                ndim: Any = getattr(value, "ndim", 0)
                return astype(str).tolist() if callable(astype) and ndim else str(value)
            index, to_dict = getattr(value, "index", None), getattr(value, "to_dict", None)
            if index is not None and callable(to_dict):     # a pandas Series: keyed by it
                return {str(k): v for k, v in to_dict().items()}
            tolist = getattr(value, "tolist", None)
            if callable(tolist):
                out = tolist()
                # a long double's ``tolist`` is itself: shown by its repr, not recursed into
                return NOT_PLAIN if type(out) is type(value) else out
        except Exception:  # noqa: BLE001 - a look-alike: shown by its repr
            return NOT_PLAIN
    if isinstance(value, (set, frozenset)):
        return list(value)
    return NOT_PLAIN


def json_default(value: Any) -> Any:
    """A ``default=`` for ``json.dumps``: ``plain``, else the value's ``repr``."""
    out = plain(value)
    return repr(value) if out is NOT_PLAIN else out


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in dicts, lists and tuples) as None: JSON
    has no such numbers, and the ``NaN`` ``json.dumps`` writes is refused by strict parsers
    (JavaScript's, Go's)."""
    if isinstance(value, float):
        return value if value - value == 0.0 else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
