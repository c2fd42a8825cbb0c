"""Wire schema of a data-plane message header (ring slots and nng links).

The header is a msgpack map; this model documents it and validates it where data comes from
outside the device (links). JSON Schema is exported from it for non-Python tools.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# numpy dtype strings accepted on the wire: plain numbers only (no objects, no pickle).
WireDType = Literal[
    "|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8",
]

ArrayDesc = Annotated[
    tuple[str, WireDType, list[Annotated[int, Field(ge=0)]], Annotated[int, Field(ge=0)]],
    Field(description="[name, dtype, shape, byte offset from the start of the array region]"),
]
HopEntry = Annotated[
    tuple[str, int, int], Field(description="[module name, t_in_ns, t_out_ns]")
]


class FrameHeader(BaseModel):
    """Header of one data-plane message (frame or metadata)."""

    model_config = ConfigDict(extra="forbid")

    frame_id: int = Field(description="id given by the source; constant along the pipeline")
    source: str = Field(description="source (camera/stream) id")
    ts_ns: int = Field(description="wall-clock ns when the source produced the frame")
    hops: list[HopEntry] = Field(default_factory=list)
    fields: dict[str, Any] = Field(default_factory=dict)
    arrays: list[ArrayDesc] = Field(default_factory=list)
