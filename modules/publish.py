"""``publish``: sends a JSON event per message to the application's events topic."""

from __future__ import annotations

import time
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from edgeva.modules.base import MAX_NAME_CHARS, Module, ModuleConfig
from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports


class PublishConfig(ModuleConfig):
    """Args of ``publish``. With no args every message becomes an event holding ``frame_id``,
    ``source``, ``latency_ms`` (end-to-end, from decode) and every field of the message."""

    type: Literal["publish"] = "publish"
    ports: ClassVar[Ports] = Ports(forwards="nothing")  # any message: its fields become the event
    fields: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] | None = Field(
        default=None, max_length=64, description="message fields to include (None: all of them)"
    )
    max_rate: float = Field(
        default=0.0, ge=0, le=1000, description="events per second at most (0: every message); the agent also caps each app's event rate"
    )
    hops: bool = Field(
        default=False, description="add 'hops': [module, t_in_ns, t_out_ns] per module the frame went "
        "through (per-hop overhead: the gap between one module's t_out and the next one's t_in)"
    )


class Publish(Module[PublishConfig]):
    """Terminal module: turns messages into events on ``edgeva/v1/{device}/{tenant}/events/{app}``.

    Consumes any message; emits ``{"frame_id", "source", "ts", "latency_ms", <fields>}``;
    forwards nothing. ``update`` applies new args live."""

    config_class = PublishConfig

    def setup(self) -> None:
        self._next = 0.0

    def process(self, msg: Message) -> None:
        cfg = self.config
        if cfg.max_rate:
            now = time.monotonic()
            if now < self._next:
                return None
            self._next = now + 1.0 / cfg.max_rate
        keys = msg.fields if cfg.fields is None else [k for k in cfg.fields if k in msg.fields]
        event = {k: msg.fields[k] for k in keys}
        event.update(
            frame_id=msg.frame_id,
            source=msg.source,
            ts=msg.ts_ns / 1e9,
            latency_ms=round(msg.latency_ms(), 3),
        )
        if cfg.hops:
            event["hops"] = [list(h) for h in msg.hops]
        self.ctx.emit(event)
        return None

    def update(self, config: PublishConfig) -> bool:
        self.config = config
        return True
