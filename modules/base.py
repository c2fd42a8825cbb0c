"""What a module author writes against: a pydantic config and a small lifecycle.

A module type is one file in ``modules/`` (or in a third-party package) holding::

    class TrackerConfig(ModuleConfig):
        type: Literal["tracker"] = "tracker"
        ports: ClassVar[Ports] = Ports(consumes="detections", produces="tracks")
        algorithm: Literal["sort", "centroid"] = "sort"

    class Tracker(Module[TrackerConfig]):
        config_class = TrackerConfig
        def process(self, msg): ...

and registered under the entry point group ``edgeva.modules`` (``tracker = "edgeva.modules.tracker:Tracker"``).
Module authors see messages, config and their ``ModuleContext`` only; routing, rings, links,
metrics and restarts belong to the agent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports, ports_of

# -- bounds shared by the module configs (every tenant-controlled value has one: tests/test_bounds.py)
#: Most threads one module may ask for (onnxruntime intra-op, OpenCV): more only cost context
#: switches on the 4-core boards edgeva targets, and every tenant's modules share the device.
MAX_THREADS = 16
#: Longest file path or URL an arg may hold (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096
#: Longest name of a tensor, a served model, a class, a region, a stream.
MAX_NAME_CHARS = 128
#: Largest frame side in pixels a config may ask for (8K is 7680 x 4320).
MAX_SIDE = 8192
#: Largest class id; at most ``MAX_CLASSES`` of them in a filter.
MAX_CLASS_ID, MAX_CLASSES = 65535, 1024
#: Longest any wait a config sets may be (seconds): a deploy or a restart waits on some of them.
MAX_WAIT_S = 60.0
#: Most polygons of a roi/annotate config, and points per polygon.
MAX_POLYGONS, MAX_POINTS = 64, 256

ClassId = Annotated[int, Field(ge=0, le=MAX_CLASS_ID)]
ClassIds = Annotated[list[ClassId], Field(max_length=MAX_CLASSES)]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
Coord = Annotated[float, Field(ge=-1e6, le=1e6)]
Point = tuple[Coord, Coord]
RegionName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Polygon = Annotated[list[Point], Field(max_length=MAX_POINTS)]
#: Marks a field whose name sounds like a file or a place (``model_name``, ``output_name``) as
#: a name that is never opened (``schemas.bounds``).
NOT_A_PATH = {"edgeva_not_path": "a name, never opened"}


def _ports_schema(schema: dict[str, Any], cls: type) -> None:
    ports = ports_of(cls)
    if ports is not None:
        schema["edgeva_ports"] = ports.json_value()


class ModuleConfig(BaseModel):
    """Base of every module config: unknown keys are refused, so a typo is an error, not a no-op.

    Subclasses add ``type: Literal["<name>"] = "<name>"`` and their own fields, each with a
    description (it ends up in the exported JSON Schema and in error messages).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_ports_schema)

    type: str
    #: What the type reads from and writes to messages (``schemas.ports``), in one line, e.g.
    #: ``ports: ClassVar[Ports] = Ports(consumes="frame", produces="brightness dark")``. It is
    #: in the exported schema (``edgeva_ports``) and docs, and ``edgeva check`` and every deploy
    #: refuse wiring that feeds the type nothing it can use. None: unknown, never refused.
    ports: ClassVar[Ports | None] = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.ports is not None:
            cls.ports.check_config(cls)  # a 'when' naming no arg fails at import, not at deploy


C = TypeVar("C", bound=ModuleConfig)

#: ``alloc(name, shape, dtype)`` -> a writable array that lives in the output buffer.
Alloc = Callable[[str, tuple, Any], np.ndarray]


class _NoFrame:
    def __repr__(self) -> str:
        return "NO_FRAME"


#: What a source's ``produce`` returns when it has no frame right now but has not ended (a
#: live source reconnecting): the runtime gives the slot back, serves control messages, and
#: calls ``pace`` and ``produce`` again.
NO_FRAME = _NoFrame()


class ModuleError(RuntimeError):
    """A module cannot do its job (bad source, missing model...). Raised from ``setup`` it
    fails the deployment and rolls the application back, with this message as the reason.
    Raised from ``process`` it refuses that one input (counted as ``refused_inputs`` in the
    module's metrics) and the module goes on; any other exception from ``process`` is a crash,
    and the module is restarted."""


class Restart(Exception):  # noqa: N818 - a request, not an error
    """Raised from ``pace``/``produce``/``process``: start this module again now, from
    ``setup`` (for instance a source that came back in a mode that changes its output's size).
    The agent restarts it at once, without counting it as a crash; its consumers re-attach."""


@dataclass
class ModuleContext:
    """What the runtime gives a module: who it is, and where its side outputs go.

    ``emit(event)`` sends a JSON-able dict to the application's events topic (the agent
    rate-limits it); ``log`` is a logger named after the module instance. ``unattended``:
    no operator is waiting on this start (the agent restoring its apps at boot, or restarting
    the module after a failure): a source should wait for its input rather than fail setup.
    """

    name: str
    apps: tuple[str, ...] = ()
    device: str = "local"
    emit: Callable[[dict], None] = lambda event: None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("edgeva.module"))
    unattended: bool = False

    def __post_init__(self) -> None:
        # Every event goes through the size check, whoever wrote the module: an event is
        # published as is to the tenant's topic and kept in the offline outbox.
        send = self.emit
        self.emit = lambda event: send(checked_event(event))


#: Largest event, as JSON, a module may emit (``ctx.emit``); a bigger one is refused.
MAX_EVENT_BYTES = 64 * 1024


def checked_event(event: dict) -> dict:
    """``event`` if its JSON form fits ``MAX_EVENT_BYTES``; else ``ModuleError`` (from
    ``process``: that input is refused and counted, the module goes on)."""
    size = len(json.dumps(event, separators=(",", ":"), default=str).encode())
    if size > MAX_EVENT_BYTES:
        keys = ", ".join(sorted(map(str, event))[:8])
        raise ModuleError(f"event of {size} bytes refused: the limit is {MAX_EVENT_BYTES} "
                          f"(modules.base.MAX_EVENT_BYTES); its keys: {keys}")
    return event


class Module(Generic[C]):
    """A processing step. Lifecycle: ``setup`` once, ``process`` per input message,
    ``update`` when the operator changes its args, ``close`` at the end.

    ``process`` returns zero, one or several messages (a list or any iterable); each goes to
    every output of the module. Returning the input message forwards it unchanged (with the
    arrays it carries). The runtime stamps hop timestamps; modules need not.
    """

    config_class: ClassVar[type[ModuleConfig]]
    #: True for modules that produce messages from nothing (decoders): the runtime calls
    #: ``produce`` in a loop instead of ``process``.
    is_source: ClassVar[bool] = False

    def __init__(self, config: C, ctx: ModuleContext) -> None:
        self.config = config
        self.ctx = ctx

    def setup(self) -> None:
        """Open files, load models, connect to servers. Raise ``ModuleError`` to refuse."""

    def process(self, msg: Message) -> Message | Iterable[Message] | None:
        """Handle one input message; return what goes downstream."""
        return msg

    #: Modules that gain from batching (inference) set this above 1 (in ``setup``) and may
    #: override ``process_batch``: when messages of several inputs (cameras) are waiting
    #: together, the runtime hands over up to this many at once.
    max_batch: int = 1

    def process_batch(self, msgs: Sequence[Message]) -> list[Message | Iterable[Message] | None]:
        """Handle several input messages at once (one per input at most); return one result
        per message, in order, each what ``process`` would return for it."""
        return [self.process(m) for m in msgs]

    def produce(self, alloc: Alloc) -> Message | None:
        """Sources only: make the next message, writing big arrays through ``alloc`` so they
        land directly in the output ring slot. Return ``None`` when the source has ended, and
        ``NO_FRAME`` when there is nothing now but more may come (keep each call short)."""
        raise NotImplementedError

    def pace(self) -> None:
        """Sources only: wait until the next message is due (real-time pacing). Called before
        ``produce``, outside the measured processing time."""

    def output_bytes(self) -> int | None:
        """Bytes one output message may need (sets the output ring's slot size). Called after
        ``setup``. Sources must answer; None lets the runtime use the largest input slot plus
        room for metadata."""
        return None

    #: Sources that are live (a camera, RTSP): their consumers default to ``drop_oldest``, so
    #: a slow consumer skips frames instead of stalling the source.
    live: bool = False

    def update(self, config: C) -> bool:
        """Apply new args while running. Return True if applied in place; False asks the
        runtime to restart the module with the new config. Default: apply nothing, restart."""
        return False

    def close(self) -> None:
        """Release what ``setup`` acquired."""

    def describe(self) -> dict[str, str]:
        """What the deploy reply says of this module once set up, beside its status (the
        reply's ``modules.<name>.info``): short facts an operator deploying it wants to see,
        such as the execution provider a model runs on. Called once after ``setup``."""
        return {}

    def metrics(self) -> dict[str, float]:
        """The module's own figures (cumulative counters or ratios), published with its
        metrics each interval under ``counters``; called by the runtime, never per frame."""
        return {}
