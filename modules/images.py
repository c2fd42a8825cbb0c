"""Size an image before decoding it: ``cv2.imdecode`` allocates whatever the header claims.

A 631-byte JPEG whose header says 6000 x 6000 decodes into 108 MB. Tenants give images (reid
templates, as files or ``base64:`` data), so their headers are read here first and an image
over ``MAX_IMAGE_PIXELS`` or ``MAX_IMAGE_BYTES`` is refused before any pixel is allocated.
Only PNG and JPEG are taken: OpenCV decodes many more formats (TIFF, EXR, PNM...), each with
its own header and its own ways to claim memory.
"""

from __future__ import annotations

import struct
from pathlib import Path

#: Most pixels of an image a tenant gives (2048 x 2048: a person's crop needs far fewer).
MAX_IMAGE_PIXELS = 2048 * 2048
#: Largest encoded image (file or base64-decoded data).
MAX_IMAGE_BYTES = 4 << 20

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length field
_SOS, _EOI = 0xDA, 0xD9


class ImageRefused(ValueError):
    """Not a PNG/JPEG, no readable size, or too big."""


def image_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame, without decoding."""
    data = bytes(data[: 1 << 20]) if len(data) > (1 << 20) else bytes(data)
    if data.startswith(_PNG):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageRefused("a PNG without its IHDR header")
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    raise ImageRefused("not a PNG or JPEG image")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageRefused("a JPEG with a broken marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker in (_SOS, _EOI):
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise ImageRefused("a JPEG without a frame size before its data")


def check_image(data: bytes | memoryview) -> tuple[int, int]:
    """``image_size(data)`` if the image may be decoded; ``ImageRefused`` saying why not."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRefused(f"{len(data)} bytes: the limit is {MAX_IMAGE_BYTES} (modules.images.MAX_IMAGE_BYTES)")
    w, h = image_size(data)
    if w <= 0 or h <= 0:
        raise ImageRefused(f"its header claims {w} x {h} pixels")
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageRefused(f"its header claims {w} x {h} pixels: the limit is {MAX_IMAGE_PIXELS} "
                           "(modules.images.MAX_IMAGE_PIXELS)")
    return w, h


def read_image_file(path: Path) -> bytes:
    """The bytes of an image file, refused (``ImageRefused``) before reading when too big."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ImageRefused(f"{size} bytes: the limit is {MAX_IMAGE_BYTES} (modules.images.MAX_IMAGE_BYTES)")
    with path.open("rb") as f:
        return f.read(MAX_IMAGE_BYTES + 1)
