"""A command line generated from a pydantic settings model, so that each default is written once.

``add_model_flags(parser, Model, groups)`` adds one flag per field: ``--field-name`` (dest
``field_name``), the field's description as help followed by ``(env VAR; default: D)``, its
default (or the environment variable's value, when the field's ``Flag`` names one), choices for a
``Literal``, ``store_true`` for a bool, ``append`` for a repeatable one; each value is checked
against the field's type and bounds as it is parsed, so that a bad one is argparse's usage error
naming the flag (exit code 2). ``model_from_args`` then builds the model from the parsed flags
(flags not given and without a default are left out, so the model's defaults apply);
``flag_errors`` words a ``ValidationError`` of it flag by flag.

The flag's presentation (environment variable, metavar, argument group, the default as shown)
comes from the field's ``edgeva.agent.settings.Flag`` annotation.
"""

from __future__ import annotations

import argparse
import os
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from edgeva.agent.settings import Flag

M = TypeVar("M", bound=BaseModel)


def flag_name(field: str) -> str:
    """``max_shm_mb`` -> ``--max-shm-mb``."""
    return "--" + field.replace("_", "-")


def _flag(info: FieldInfo) -> Flag:
    return next((m for m in info.metadata if isinstance(m, Flag)), Flag())


def _value_type(info: FieldInfo) -> Any:
    """What one value of the flag is: the annotation without its None (a flag not given is
    None) and, for a repeatable flag, the type of one element."""
    ann = info.annotation
    if get_origin(ann) in (Union, types.UnionType):
        ann = next(a for a in get_args(ann) if a is not type(None))
    if get_origin(ann) is list:
        ann = get_args(ann)[0]
    return ann


def _shown(value: Any) -> str:
    """A default as ``--help`` shows it: 2.0 as 2, a list comma-separated."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _help(info: FieldInfo, flag: Flag) -> str:
    notes = []
    if flag.env:
        notes.append(f"env {flag.env}" + (f", separated by {os.pathsep!r}" if flag.repeat else ""))
    if flag.shown is not None:
        notes.append(f"default: {flag.shown}")
    elif not info.is_required() and info.default not in (None, False):
        notes.append(f"default: {_shown(info.default)}")
    text = (info.description or "") + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")  # argparse formats help with %


_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _range(constraints: list[Any]) -> str:
    """The bounds as an operator reads them: ``0..65535``, ``> 0``, ``>= 2``."""
    bound = {op: getattr(c, attr) for c in constraints
             for op, attr in ((">=", "ge"), (">", "gt"), ("<=", "le"), ("<", "lt"))
             if getattr(c, attr, None) is not None}
    if ">=" in bound and "<=" in bound:
        return f"{bound['>=']}..{bound['<=']}"
    return " and ".join(f"{op} {v}" for op, v in bound.items())


def _checker(name: str, info: FieldInfo) -> Callable[[str], Any]:
    """An argparse ``type``: one value checked against the field's type and bounds."""
    ann = _value_type(info)
    constraints = [m for m in info.metadata if not isinstance(m, Flag)]
    adapter = TypeAdapter(Annotated[(ann, *constraints)] if constraints else ann)  # (...): Python 3.10

    def check(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as e:
            err = e.errors()[0]
            why = f"must be {_range(constraints)}" if err["type"] in _BOUNDS else err["msg"]
            raise argparse.ArgumentTypeError(f"{text!r}: {why}") from None

    check.__name__ = getattr(ann, "__name__", name)  # argparse names it in some messages
    return check


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                    groups: Mapping[str, tuple[str, str]] | None = None) -> None:
    """One flag per field of ``model`` (see the module docstring); ``groups``: a ``Flag.group``
    -> (title, description) of its argument group, in the order the fields first name them."""
    made: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        flag = _flag(info)
        where: Any = parser
        if flag.group is not None:
            if flag.group not in made:
                made[flag.group] = parser.add_argument_group(*(groups or {})[flag.group])
            where = made[flag.group]
        kw: dict[str, Any] = {"help": _help(info, flag), "dest": name}
        env = os.environ.get(flag.env) if flag.env else None
        if info.annotation is bool:
            # a switch: given, it is True; so its default must be False (a True one could not be turned off)
            if info.default is not False:
                raise TypeError(f"{model.__name__}.{name}: a flag's bool setting defaults to False")
            kw["action"] = "store_true"
        elif get_origin(_value_type(info)) is Literal:
            kw.update(choices=list(get_args(_value_type(info))), default=env or info.default)
        elif flag.repeat:
            # None when not given: argparse would append to a list default, and the model fills it
            kw.update(action="append", type=_checker(name, info),
                      default=env.split(os.pathsep) if env else None)
        else:
            kw.update(type=_checker(name, info), required=info.is_required(),
                      default=env if env is not None else (None if info.is_required() else info.default))
        if flag.metavar and kw.get("action") != "store_true":
            kw["metavar"] = flag.metavar
        where.add_argument(flag_name(name), **kw)


def model_from_args(model: type[M], args: argparse.Namespace) -> M:
    """``model`` from the parsed flags: a flag that is None (not given, no default) is left
    out, so that the model's own default applies. Raises ``ValidationError``."""
    values = {n: getattr(args, n) for n in model.model_fields if getattr(args, n, None) is not None}
    return model.model_validate(values)


def flag_errors(e: ValidationError) -> str:
    """``--slots 1: Input should be greater than or equal to 2``, one per error, joined by '; '."""
    out = []
    for err in e.errors():
        where = flag_name(str(err["loc"][0])) if err["loc"] else "settings"
        out.append(f"{where} {err.get('input')!r}: {err['msg']}" if err["loc"] else f"{where}: {err['msg']}")
    return "; ".join(out)
