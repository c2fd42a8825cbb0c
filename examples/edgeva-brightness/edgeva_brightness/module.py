"""``brightness``: the mean brightness of each frame, and whether the scene is dark.

Consumes a message carrying a ``frame`` array (BGR or grey, uint8); forwards a message with
the fields ``brightness`` (0..255, mean over a subsampled frame) and ``dark`` (below
``threshold``), and no arrays. ``update`` applies a new threshold in place.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from edgeva.modules.base import Module, ModuleConfig, ModuleError
from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports


class BrightnessConfig(ModuleConfig):
    """Args of ``brightness``."""

    type: Literal["brightness"] = "brightness"
    # What it reads and adds (msg.derive keeps the input's fields): edgeva check refuses a
    # graph that gives it no frame, and docs/schemas show it.
    ports: ClassVar[Ports] = Ports(consumes="frame", produces="brightness dark")
    threshold: float = Field(default=40.0, ge=0, le=255, description="below this mean brightness the frame is dark")
    step: int = Field(default=4, ge=1, le=64, description="look at every step-th pixel in each direction")


class Brightness(Module[BrightnessConfig]):
    """Mean brightness of the ``frame`` array; ``dark`` when under the threshold."""

    config_class = BrightnessConfig

    def process(self, msg: Message) -> Message:
        frame = msg.arrays.get("frame")
        if frame is None:
            raise ModuleError(f"brightness: message {msg.frame_id} has no 'frame' array "
                              f"(it has {sorted(msg.arrays)}): put it after a decoder")
        s = self.config.step
        value = float(frame[::s, ::s].mean())  # a strided view: no copy of the frame
        return msg.derive(brightness=round(value, 2), dark=value < self.config.threshold)

    def update(self, config: BrightnessConfig) -> bool:
        self.config = config
        return True
