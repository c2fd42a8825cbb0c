"""Wire schema of a data-plane message header (ring slots and nng links).

The header is a msgpack map; this model documents it and validates it where data comes from
outside the device (links). JSON Schema is exported from it for non-Python tools.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Bounds of a header (issue 20): ``agent.dataplane.codec`` checks every one of them before it
# allocates anything for it, on rings and links alike, and its encoder refuses what its decoder
# would. Unpacking costs up to ~80 B of Python objects per header byte (a byte 0x90 is one empty
# list), so the byte bound is what bounds memory: a 14 MiB header once cost 1.1 GB and 3 s of a
# link's receive thread; 256 KiB costs at most ~20 MB and tens of ms.
MAX_HEADER_BYTES = 256 << 10  # the msgpack header: ~3000 tracks with boxes and labels fit
MAX_CONTAINER_LEN = 65536  # items of one list or map in a header (checked before it is made)
MAX_STR_BYTES = MAX_HEADER_BYTES  # one str or bin value in a header (implied by the byte bound)
MAX_ARRAYS = 64  # named arrays in one message
MAX_HOPS = 64  # modules a message went through
MAX_NAME = 200  # characters of the source, an array name, a hop's module name, a field key
MAX_NDIM = 8  # frames are 3-d, batches of crops 4-d; more is a lie, not an image
MAX_INT = 2**64 - 1  # msgpack's widest integer (ids and timestamps)
MIN_INT = -(2**63)

_Name = Annotated[str, Field(max_length=MAX_NAME)]
_Int = Annotated[int, Field(ge=MIN_INT, le=MAX_INT)]
_Size = Annotated[int, Field(ge=0, le=MAX_INT)]

# numpy dtype strings accepted on the wire: plain numbers only (no objects, no pickle).
WireDType = Literal[
    "|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8",
]

ArrayDesc = Annotated[
    tuple[_Name, WireDType, Annotated[list[_Size], Field(max_length=MAX_NDIM)], _Size],
    Field(description="[name, dtype, shape, byte offset from the start of the array region]; the "
                      "array's bytes must lie in the region, after the previous array's"),
]
HopEntry = Annotated[
    tuple[_Name, _Int, _Int], Field(description="[module name, t_in_ns, t_out_ns]")
]


class FrameHeader(BaseModel):
    """Header of one data-plane message (frame or metadata)."""

    model_config = ConfigDict(extra="forbid")

    frame_id: int = Field(ge=MIN_INT, le=MAX_INT, description="id given by the source; constant along the pipeline")
    source: str = Field(max_length=MAX_NAME, description="source (camera/stream) id",
                        json_schema_extra={"edgeva_not_path": "a stream id carried along, never opened"})
    ts_ns: int = Field(ge=MIN_INT, le=MAX_INT, description="wall-clock ns when the source produced the frame")
    hops: list[HopEntry] = Field(default_factory=list, max_length=MAX_HOPS)
    fields: dict[_Name, Any] = Field(
        default_factory=dict, max_length=MAX_CONTAINER_LEN,
        json_schema_extra={"edgeva_checked_by": "agent.dataplane.codec: the whole header is at most "
                           "MAX_HEADER_BYTES, each list/map MAX_CONTAINER_LEN, each str/bin MAX_STR_BYTES, "
                           "before it is unpacked"},
    )
    arrays: list[ArrayDesc] = Field(default_factory=list, max_length=MAX_ARRAYS)
