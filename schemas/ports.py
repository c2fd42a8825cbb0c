"""What each module type reads from and writes to messages, and the wiring check built on it.

A module type declares its ports on its config class, in one line (``modules.base``)::

    class BrightnessConfig(ModuleConfig):
        ports: ClassVar[Ports] = Ports(consumes="frame", produces="brightness dark")

A name is a key of the message: a field (``msg.fields["detections"]``) or an array
(``msg.arrays["frame"]``). The built-in names: ``frame``, ``tensor``, ``crops`` (arrays);
``width``, ``height``, ``detections``, ``labels``, ``crop_index``, ``tracks``, ``roi``,
``reid`` (fields); ``docs/modules.md`` lists each type's.

- ``consumes``: what it needs, as alternatives: ``"tracks | detections"`` (either will do),
  ``"crops + detections | frame + tracks"`` (both names of one alternative). Empty: any
  message will do (``publish``). Names it only uses when present (annotate's layers) are left
  out: the check asks whether a module can work at all, not whether it gets everything.
- ``produces``: the fields it adds; ``arrays``: the arrays it makes.
- ``forwards``: what of its input goes on by itself: ``"fields"`` (the default: the module
  returns ``msg.derive(...)``, which keeps every field of the input and no array),
  ``"message"`` (it returns its input: everything), ``"nothing"`` (a sink, or a source).
- ``passes``: arrays of its input it passes on when they are there
  (``out.arrays["frame"] = msg.arrays["frame"]``).
- ``when``: ``{name: arg}``: a name of ``produces``, ``arrays`` or ``passes`` that the module
  gives only when the config's bool ``arg`` is true (the detector makes ``crops`` only with
  ``crops: true``). A type whose needs, or whose outputs, depend on its args in another way
  defines ``active_ports(self) -> Ports`` on its config: the check asks it for the ports of
  that module's args.

A type that declares nothing (``ports = None``, ``ModuleConfig``'s default) is of unknown
capability: it is never refused, takes anything, and what it gives satisfies anything
downstream. So a third-party type written before ports existed deploys as it did.

The check (``wiring_errors``, run by ``schemas.graph.validate_graph`` on every deploy and by
``edgeva check``): what reaches a module is the union of what its upstreams give (each one's
own names plus what it forwards of what reaches it). A module with upstreams must get at
least one whole alternative of its ``consumes``, and at least some messages (a sink upstream
gives none): else ``bad_wiring`` at the edge that feeds it, ``modules.<upstream>.outputs[i]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeva.schemas.errors import BAD_WIRING, EdgevaError, format_path, shown

#: What an undeclared type gives: stands for any name, so whatever is downstream is satisfied.
ANY = "*"
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]


def _words(value: Any) -> Any:
    return value.replace(",", " ").split() if isinstance(value, str) else value


class Ports(BaseModel):
    """A module type's ports (see the module doc); strings are split on spaces or commas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consumes: tuple[tuple[Name, ...], ...] = ()
    produces: tuple[Name, ...] = ()
    arrays: tuple[Name, ...] = ()
    passes: tuple[Name, ...] = ()
    forwards: Literal["fields", "message", "nothing"] = "fields"
    when: dict[Name, Name] = Field(default_factory=dict)

    @field_validator("consumes", mode="before")
    @classmethod
    def _alternatives(cls, v: Any) -> Any:
        if isinstance(v, str):  # "a + b | c": no empty alternative ("a |" is a typo)
            return [tuple(n.strip() for n in alt.split("+")) for alt in v.split("|")] if v.strip() else []
        return v

    @field_validator("produces", "arrays", "passes", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _words(v)

    @model_validator(mode="after")
    def _when_names_a_port(self) -> Ports:
        stray = sorted(set(self.when) - {*self.produces, *self.arrays, *self.passes})
        if stray:
            raise ValueError(f"'when' names {stray}, which produces, arrays and passes do not list")
        return self

    def check_config(self, config_class: type[BaseModel]) -> None:
        """Raise ``TypeError`` when ``when`` names an arg ``config_class`` lacks (run when the
        class is defined, so a typo fails at import, not at a deploy)."""
        missing = sorted(a for a in set(self.when.values()) if a not in config_class.model_fields)
        if missing:
            raise TypeError(f"{config_class.__name__}.ports: 'when' names args it does not have: {missing}")

    def active(self, config: BaseModel) -> Ports:
        """These ports with every name whose ``when`` arg is false in ``config`` left out."""
        off = {n for n, arg in self.when.items() if not getattr(config, arg)}

        def keep(names: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(n for n in names if n not in off)

        return self.model_copy(update={"produces": keep(self.produces), "arrays": keep(self.arrays),
                                       "passes": keep(self.passes), "when": {}})

    @property
    def emits(self) -> bool:
        """Whether the module sends messages on at all (a sink such as annotate does not)."""
        return self.forwards != "nothing" or bool(self.produces or self.arrays or self.passes)

    def needs(self) -> str:
        """``tracks or detections``; ``any message`` when it needs nothing in particular."""
        return " or ".join(" + ".join(alt) for alt in self.consumes) or "any message"

    def summary(self, source: bool) -> str:
        """One line for docs/modules.md: what it consumes, produces and passes on."""
        def cond(n: str, kind: str = "") -> str:
            notes = [kind] if kind else []
            if n in self.when:
                notes.append(f"with `{self.when[n]}`")
            return f"`{n}`" + (f" ({', '.join(notes)})" if notes else "")

        needs = " or ".join(" + ".join(f"`{n}`" for n in alt) for alt in self.consumes) or "any message"
        made = [cond(n) for n in self.produces] + [cond(n, "array") for n in self.arrays]
        on = {"fields": "every field of its input", "message": "its whole input", "nothing": "nothing"}[self.forwards]
        if self.passes:
            on += ", and its input's array " + ", ".join(cond(n) for n in self.passes)
        return (f"consumes {'nothing (a source)' if source else needs} · produces {', '.join(made) or 'nothing'}"
                f" · passes on {on}")

    def json_value(self) -> dict[str, Any]:
        """The ``edgeva_ports`` value of the type's exported JSON Schema."""
        return self.model_dump(mode="json")


def ports_of(config_class: Any) -> Ports | None:
    """The ports a config class declares, or None (unknown capability)."""
    p = getattr(config_class, "ports", None)
    return p if isinstance(p, Ports) else None


def active_ports(config: BaseModel) -> Ports | None:
    """The ports of one module, given its validated config: its ``active_ports()`` when its
    type defines one, else its type's ports with ``when`` applied; None when undeclared."""
    hook = getattr(config, "active_ports", None)
    if callable(hook):
        return hook()
    ports = ports_of(type(config))
    return ports.active(config) if ports is not None else None


def _listed(names: set[str]) -> str:
    return ", ".join(sorted(names)) if names else "no fields or arrays"


def wiring_errors(
    mods: Mapping[str, Any],
    ports: Mapping[str, Ports | None],
    upstream: Mapping[str, list[str]],
    order: Sequence[str],
) -> list[EdgevaError]:
    """Every module fed nothing it can use, in ``order`` (every module after its upstreams).

    ``mods``: name -> spec (``type``, ``outputs``); ``ports``: name -> its active ports
    (``Ports.active``), None when unknown; ``upstream``: name -> the modules feeding it.
    A module with unknown ports, or without upstreams, is never refused. After an error the
    module is taken as fed, so that one bad edge is reported once, not at every module below.
    """
    gives: dict[str, tuple[set[str], set[str]] | None] = {}  # (fields, arrays); None: no messages
    errors: list[EdgevaError] = []
    where: dict[str, dict[str, int]] = {}  # upstream -> {output: its first index}, built when needed
    for name in order:
        p, ups = ports[name], upstream[name]
        live = [u for u in ups if gives[u] is not None]
        fields = set().union(*(gives[u][0] for u in live))  # type: ignore[index]
        arrays = set().union(*(gives[u][1] for u in live))  # type: ignore[index]
        got = fields | arrays
        if p is not None and ups and not (live and (ANY in got or not p.consumes
                                                    or any(set(alt) <= got for alt in p.consumes))):
            first = ups[0]
            if not live:
                why = f"{mods[first].type} {shown(first)} sends no messages on" if len(ups) == 1 else \
                    "none of its inputs sends messages on"
            elif len(live) == 1:
                (u,) = live
                why = f"{mods[u].type} {shown(u)} gives {_listed(got)}"
            else:
                why = f"its inputs give {_listed(got)}"
            if first not in where:  # a dict, not outputs.index per error: one module may feed thousands
                where[first] = {o: i for i, o in reversed(list(enumerate(mods[first].outputs)))}
            errors.append(EdgevaError(BAD_WIRING, f"{mods[name].type} {shown(name)} needs {p.needs()}; {why}",
                                      format_path(("modules", first, "outputs", where[first][name]))))
        if p is None:
            gives[name] = ({ANY}, {ANY})
        elif not p.emits:
            gives[name] = None
        else:
            keep_fields = p.forwards != "nothing"
            out_arrays = set(p.arrays) | (arrays if p.forwards == "message" else set())
            # an array passed on when present: present if it arrives, or may if anything may
            out_arrays |= {a for a in p.passes if a in arrays or ANY in arrays}
            gives[name] = (set(p.produces) | (fields if keep_fields else set()), out_arrays)
    return errors
