"""What a module author writes against: a pydantic config and a small lifecycle.

A module type is one file in ``modules/`` (or in a third-party package) holding::

    class TrackerConfig(ModuleConfig):
        type: Literal["tracker"] = "tracker"
        algorithm: Literal["sort", "centroid"] = "sort"

    class Tracker(Module[TrackerConfig]):
        config_class = TrackerConfig
        def process(self, msg): ...

and registered under the entry point group ``edgeva.modules`` (``tracker = "modules.tracker:Tracker"``).
Module authors see messages, config and their ``ModuleContext`` only; routing, rings, links,
metrics and restarts belong to the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from schemas.message import Message


class ModuleConfig(BaseModel):
    """Base of every module config: unknown keys are refused, so a typo is an error, not a no-op.

    Subclasses add ``type: Literal["<name>"] = "<name>"`` and their own fields, each with a
    description (it ends up in the exported JSON Schema and in error messages).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


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


@dataclass
class ModuleContext:
    """What the runtime gives a module: who it is, and where its side outputs go.

    ``emit(event)`` sends a JSON-able dict to the application's events topic (the agent
    rate-limits it); ``log`` is a logger named after the module instance.
    """

    name: str
    apps: tuple[str, ...] = ()
    device: str = "local"
    emit: Callable[[dict], None] = lambda event: None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("edgeva.module"))


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

    def metrics(self) -> dict[str, float]:
        """The module's own figures (cumulative counters or ratios), published with its
        metrics each interval under ``counters``; called by the runtime, never per frame."""
        return {}
