"""Strict JSON in: duplicate keys and NaN refused, with a path to the offence.

Python's ``json`` silently keeps the last of two equal keys; in a deployment that means a second
``"detector"`` module quietly replaces the first. We refuse that instead.
"""

from __future__ import annotations

import json
from typing import Any

from edgeva.schemas.errors import (
    BAD_JSON,
    BAD_REQUEST,
    DUPLICATE_NAME,
    EdgevaError,
    format_path,
    shown,
)

#: Deepest nesting of objects and arrays accepted. A deployment needs about 5 levels (module
#: args hold lists of points); a hostile payload nested a thousand deep would otherwise make the
#: recursive walks below (and pydantic, and json.dumps) raise RecursionError.
MAX_DEPTH = 32


class _Obj(dict):
    """A JSON object that remembers which keys it saw twice (in order)."""

    __slots__ = ("dups",)


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.dups = []
    for key, value in pairs:
        if key in obj and key not in obj.dups:
            obj.dups.append(key)
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def nesting_depth(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items = v.values()
        elif isinstance(v, list):
            items = v
        else:
            continue
        deepest = max(deepest, d)
        stack.extend((x, d + 1) for x in items if isinstance(x, dict | list))
    return deepest


def _first_dup(value: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    if isinstance(value, _Obj):
        if value.dups:
            return (*loc, value.dups[0])
        for k, v in value.items():
            found = _first_dup(v, (*loc, k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _first_dup(v, (*loc, i))
            if found:
                return found
    return None


def _plain(value: Any) -> Any:
    # back to plain dicts: _Obj must not leak into models or later json.dumps comparisons
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def loads_object(payload: bytes | bytearray | str) -> tuple[dict[str, Any], tuple | None]:
    """Parse a JSON object; return it with the location of the first duplicated key (or None).

    Raises ``EdgevaError(bad_json)`` for bytes that are not UTF-8 JSON and
    ``EdgevaError(bad_request)`` for JSON that is not an object. Duplicates are returned rather
    than raised because their path depends on which form (native or Listing 1) the caller sees.
    """
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes | bytearray) else payload
        data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise EdgevaError(BAD_JSON, f"payload is not valid JSON: {exc}") from None
    except RecursionError:  # the C parser gives up near the interpreter's recursion limit
        raise EdgevaError(BAD_JSON, f"payload nests objects/arrays deeper than {MAX_DEPTH} levels") from None
    if nesting_depth(data) > MAX_DEPTH:
        raise EdgevaError(BAD_JSON, f"payload nests objects/arrays deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict):
        raise EdgevaError(BAD_REQUEST, f"expected a JSON object, got {type(data).__name__}")
    return _plain(data), _first_dup(data, ())


def duplicate_keys(payload: bytes | bytearray | str) -> list[tuple]:
    """Locations of every duplicated key in a JSON text (``loads_object`` gives the first);
    empty for text that does not parse."""
    found: list[tuple] = []

    def walk(value: Any, loc: tuple) -> None:
        if isinstance(value, _Obj):
            found.extend((*loc, key) for key in value.dups)
            for k, v in value.items():
                walk(v, (*loc, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*loc, i))

    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes | bytearray) else payload
        walk(json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant), ())
    except (UnicodeDecodeError, ValueError):
        return []
    return found


def loads_strict(payload: bytes | bytearray | str) -> dict[str, Any]:
    """Parse a JSON object, refusing duplicate keys with ``EdgevaError(duplicate_name)``."""
    data, dup = loads_object(payload)
    if dup:
        raise duplicate_error(dup)
    return data


def duplicate_error(loc: tuple) -> EdgevaError:
    """The error for a key seen twice at ``loc`` (the key is the last element)."""
    where = format_path(loc[:-1]) or "the top level"
    return EdgevaError(DUPLICATE_NAME, f"key {shown(loc[-1])} appears twice in {where}", format_path(loc))
