"""Size strings as CodaLab writes them: a number and an optional unit in powers of 1024."""

from __future__ import annotations

import functools
import math

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


@functools.lru_cache(maxsize=1024)
def parse_size(text: str) -> int:
    """Return the number of bytes in ``text`` (``"2g"``, ``"512m"``, ``"3"``, ``"1.5g"``).

    Units are case-insensitive and may carry a trailing ``b`` or ``ib`` (``"2GiB"``).
    Raises ``ValueError`` on anything else, including the empty string: callers
    that follow the server's ``request_memory or "2g"`` rule substitute first.
    """
    raw = text.strip().lower()
    if raw.endswith("ib"):
        raw = raw[:-2]
    elif len(raw) > 1 and raw.endswith("b") and raw[-2] in "kmgtp":
        raw = raw[:-1]
    number, unit = raw, ""
    if raw and raw[-1] in _UNITS and not raw[-1].isdigit():
        number, unit = raw[:-1], raw[-1]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    total = value * _UNITS[unit]  # finite numbers times a unit can still overflow
    if value < 0 or math.isnan(total) or math.isinf(total):
        raise ValueError(f"not a size: {text!r}")
    return int(total)
