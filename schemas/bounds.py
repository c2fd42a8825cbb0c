"""Bounds by construction: every value a tenant controls has a limit written in its model.

A tenant's deploy or update becomes pydantic models (``schemas.deployment``,
``schemas.commands``, every module type's config). Each value in them costs the device
something (memory, threads, seconds of waiting, bytes of every event), so each must be bounded
where it is declared, not by whatever a module happens to do with it:

- a number (``int``, ``float``): an upper bound (``le``/``lt``);
- a string: a maximum length (``max_length``, or an anchored ``pattern`` of bounded width);
- a list, set or dict: a maximum length (a ``tuple[int, int]`` has a fixed one);
- a string whose name says it may be a file or a place (``path``, ``model``, ``file``,
  ``source``, ``image``, ``url``, ``output``, ``dir``): marked, either as a path the agent
  confines (``json_schema_extra={"edgeva_path": KIND}``, see ``agent/paths.py``) or as not
  one (``json_schema_extra={"edgeva_not_path": "why"}``: a tensor or model *name* that is
  never opened);
- ``Any``: refused, unless the field says where it is checked (``{"edgeva_checked_by":
  "..."}``: a deployment's ``args``, checked against the module type's own config).

``unbounded_fields(model)`` lists what breaks these rules; ``tests/test_bounds.py`` holds every
built-in type, the deployment and the commands to it, and ``edgeva check`` reports it for
third-party types (``schemas.check``).
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

PATH_MARK = "edgeva_path"
NOT_PATH_MARK = "edgeva_not_path"
CHECKED_BY_MARK = "edgeva_checked_by"
#: Field names that may hold a file, a URL or a host: they must be marked one way or the other.
PATH_LIKE = re.compile(r"path|model|file|source|image|url|output|dir", re.I)
#: Widest string an anchored pattern may let through and still count as bounded.
MAX_PATTERN_WIDTH = 1 << 16


@dataclass(frozen=True)
class Finding:
    """One value without a bound: where (``gallery[].name``) and what is missing."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _constraint(meta: list[Any], *names: str) -> bool:
    return any(getattr(m, n, None) is not None for m in meta for n in names)


def _flatten(meta: list[Any]) -> list[Any]:
    """Constraint objects, with a ``FieldInfo`` nested in ``Annotated`` opened up."""
    out: list[Any] = []
    for m in meta:
        out.append(m)
        out.extend(getattr(m, "metadata", None) or [])
    return out


def pattern_width(pattern: str) -> int | None:
    """Longest string an anchored pattern (``^...$``) matches, or None when it is not anchored
    at both ends or has no maximum."""
    try:
        parsed = re._parser.parse(pattern)  # type: ignore[attr-defined]
        from re._constants import AT, AT_BEGINNING, AT_END  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not a Python regex: cannot tell, so not bounded
        return None
    items = list(parsed)
    if len(items) < 2 or items[0] != (AT, AT_BEGINNING) or items[-1] != (AT, AT_END):
        return None
    width = parsed.getwidth()[1]
    return width if width < MAX_PATTERN_WIDTH else None


def _string_bounded(meta: list[Any]) -> bool:
    if _constraint(meta, "max_length"):
        return True
    return any(isinstance(getattr(m, "pattern", None), str) and pattern_width(m.pattern) is not None for m in meta)


def _marks(extra: Any) -> dict[str, Any]:
    return extra if isinstance(extra, dict) else {}


class _Walker:
    def __init__(self) -> None:
        self.found: list[Finding] = []
        self._open: set[type] = set()  # models being walked (a recursive model is walked once)

    def model(self, cls: type[BaseModel], prefix: str) -> None:
        if cls in self._open:
            return
        self._open.add(cls)
        try:
            for name, info in cls.model_fields.items():
                path = f"{prefix}.{name}" if prefix else name
                marks = _marks(info.json_schema_extra)
                self.value(info.annotation, _flatten(list(info.metadata)), path, name, marks)
        finally:
            self._open.discard(cls)

    def value(self, tp: Any, meta: list[Any], path: str, name: str, marks: dict[str, Any]) -> None:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *more = get_args(tp)
            self.value(base, meta + _flatten(list(more)), path, name, marks)
            return
        if tp is Any or tp is object:
            if CHECKED_BY_MARK in marks:
                return
            self.found.append(Finding(path, "typed Any: nothing bounds it (type it, or mark where it is checked)"))
            return
        if tp is type(None) or tp is bool or origin is Literal:
            return
        if origin in (Union, types.UnionType):
            for arg in get_args(tp):  # constraints of an Optional apply to its non-None side
                self.value(arg, meta, path, name, marks)
            return
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            self.model(tp, path)
            return
        if tp in (int, float):
            if not _constraint(meta, "le", "lt"):
                self.found.append(Finding(path, f"{tp.__name__} without an upper bound (le/lt)"))
            return
        if tp is str:
            if not _string_bounded(meta):
                self.found.append(Finding(path, "string without max_length"))
            if PATH_LIKE.search(name) and PATH_MARK not in marks and NOT_PATH_MARK not in marks:
                self.found.append(Finding(path, f"path-like name not marked as a path ({PATH_MARK}) or as not "
                                          f"one ({NOT_PATH_MARK})"))
            return
        if origin is tuple:
            args = get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                if not _constraint(meta, "max_length"):
                    self.found.append(Finding(path, "tuple without max_length"))
                self.value(args[0], [], f"{path}[]", name, marks)
            else:
                for i, arg in enumerate(args):
                    self.value(arg, [], f"{path}[{i}]", name, marks)
            return
        if origin in (list, set, frozenset):
            if not _constraint(meta, "max_length"):
                self.found.append(Finding(path, f"{origin.__name__} without max_length"))
            (item,) = get_args(tp) or (Any,)
            self.value(item, [], f"{path}[]", name, marks)
            return
        if origin is dict:
            if not _constraint(meta, "max_length"):
                self.found.append(Finding(path, "dict without max_length"))
            key, item = get_args(tp) or (Any, Any)
            self.value(key, [], f"{path}{{key}}", "key", {})
            self.value(item, [], f"{path}{{}}", name, marks)
            return
        self.found.append(Finding(path, f"type {tp!r}: cannot tell whether it is bounded"))


def unbounded_fields(model: type[BaseModel], prefix: str = "") -> list[Finding]:
    """Every value of ``model`` (its nested models, lists, dicts and unions walked) that breaks
    the rules of the module docstring; empty when every one is bounded."""
    w = _Walker()
    w.model(model, prefix)
    return w.found
