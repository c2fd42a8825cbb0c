"""Make what a module process says safe to publish as JSON.

A module's events come over its pipe as msgpack, and their values can come from anywhere
upstream, a link peer included: msgpack ``bin`` (bytes), NaN, integer map keys, extension
types and deep nesting all decode fine and then make ``json.dumps`` raise (or recurse) in
whoever publishes them. ``json_safe`` turns what has an obvious JSON form into it and refuses
the rest, so the publishing side never meets a value it cannot write.
"""

from __future__ import annotations

import base64
import math
from typing import Any

MAX_DEPTH = 32  # events are shallow (a few levels of detections/tracks); deeper is abuse


class UnsafeValue(ValueError):
    """A value with no JSON form (the message says what and where)."""


def json_safe(value: Any, path: str = "event", depth: int = 0) -> Any:
    """A JSON-writable copy of ``value``: bytes become ``"base64:..."`` strings, NaN and
    infinities become None, int/float/bool/None map keys become strings, tuples lists.
    Raises ``UnsafeValue`` for anything else (extension types, objects) or nesting deeper
    than ``MAX_DEPTH``."""
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        raise UnsafeValue(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if t is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                if k is not None and type(k) not in (int, float, bool):
                    raise UnsafeValue(f"{path}: key of type {type(k).__name__} has no JSON form")
                k = str(k)
            out[k] = json_safe(v, f"{path}.{k}", depth + 1)
        return out
    if t is list or t is tuple:
        return [json_safe(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if t in (bytes, bytearray, memoryview):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    raise UnsafeValue(f"{path}: a {t.__name__} has no JSON form")
