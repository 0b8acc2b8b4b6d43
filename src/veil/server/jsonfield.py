"""Hostile-safe JSON for form fields and query parameters (``options``, ``regions``).

``json.loads`` alone lets a client reach three crashes: nesting deep enough for a
``RecursionError``, integers longer than Python's 4,300-digit conversion limit
(``ValueError``) and the non-JSON constants ``NaN``/``Infinity``. Here each is a 422
naming the field, and documents nested deeper than :data:`MAX_DEPTH` are refused before
anything walks them.
"""

from __future__ import annotations

import json
from typing import Any

from veil.server.problems import Problem, field_error

#: Deepest nesting accepted (veil's own documents need 3: regions → region → box).
MAX_DEPTH = 16
#: Longest integer literal accepted (a 64-bit integer has 20 digits).
MAX_INT_DIGITS = 32


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _depth(raw: str) -> int:
    """Bracket depth outside strings, without building anything (linear, no recursion)."""
    depth = peak = 0
    in_str = escaped = False
    for ch in raw:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > peak:
                peak = depth
                if peak > MAX_DEPTH:
                    return peak
        elif ch in "]}":
            depth -= 1
    return peak


def load_json(raw: str, field: str, slug: str) -> Any:
    """``raw`` parsed, or a 422 problem naming ``field`` (bad JSON, too deep, huge integer)."""
    def refuse(why: str) -> Problem:
        return Problem(422, f"{field} is not valid JSON: {why}", slug=slug, errors=[field_error(field, f"not valid JSON: {why}")])

    if _depth(raw) > MAX_DEPTH:
        raise refuse(f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw, parse_int=_parse_int, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise refuse(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _Refused as exc:
        raise refuse(str(exc)) from None
    except (RecursionError, ValueError) as exc:  # belt and braces: never a 500
        raise refuse(type(exc).__name__) from None
