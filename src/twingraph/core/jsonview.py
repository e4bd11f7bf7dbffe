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
    if getattr(value, "dtype", None) is not None:
        tolist = getattr(value, "tolist", None)
        size = getattr(value, "size", 1)
        if callable(tolist) and isinstance(size, int) and size <= ARRAY_ITEMS_MAX:
            try:
                return tolist()
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
