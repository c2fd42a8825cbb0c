"""Person re-identification: find the people of a gallery of template images in the stream
(paper section 4.2.2, "Reidentification")."""

from __future__ import annotations

import base64
import binascii
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeva.modules.base import (
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_SIDE,
    MAX_THREADS,
    NOT_A_PATH,
    ClassIds,
    Module,
    ModuleConfig,
    ModuleContext,
    ModuleError,
)
from edgeva.modules.decoder import resolve_path
from edgeva.modules.embedders import (
    CROP_H,
    CROP_W,
    CombinedEmbedder,
    Embedder,
    fit_crop,
    load_embedders,
)
from edgeva.modules.images import MAX_IMAGE_BYTES, ImageRefused, check_image, read_image_file
from edgeva.modules.providers import ProviderName, fallback_field, providers_field
from edgeva.schemas.message import Message
from edgeva.schemas.ports import Ports

#: Default ``threshold`` per backend: the cosine similarity above which a crop is reported as
#: a template's person. Calibrated on ``tests/data/reid`` (20 crops of the template person,
#: half of them on other walks and backgrounds, 32 crops of 30 other people) as the lowest
#: value with no false match there, rounded up; see ``tests/test_reid.py`` for precision and
#: recall. The triton backend has no default: the scale depends on the user's model.
DEFAULT_THRESHOLD: dict[str, float] = {"combined": 0.68, "onnx": 0.76, "hsv": 0.65}
#: Share of the CNN in the ``combined`` similarity (the HSV histogram gets the rest). On the
#: test set the generic ImageNet CNN adds little to the histogram (recall at no false match:
#: 0.55 at weight 0, 0.45 from 0.3 up); 0.3 keeps some shape information for scenes where
#: colour alone is ambiguous (uniforms, night), where the histogram was not tuned.
DEFAULT_CNN_WEIGHT = 0.3
#: Most templates in a gallery: each is decoded and embedded on every gallery change.
MAX_GALLERY = 64
#: Longest ``image`` string: a path, or ``base64:`` and the base64 of at most MAX_IMAGE_BYTES.
MAX_IMAGE_CHARS = len("base64:") + (MAX_IMAGE_BYTES + 2) // 3 * 4


class NoImage(ModuleError, ValueError):
    """A message with neither crops nor a frame: refused (counted), the module goes on."""


class Template(BaseModel):
    """One person to look for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS,
                      description="Reported as 'template' in matches and events.")
    image: str = Field(
        max_length=MAX_IMAGE_CHARS,
        json_schema_extra={"edgeva_path": "read"},  # the agent confines it (agent/paths.py)
        description=(
            "A crop of the person, head to feet, tightly boxed (like a detector box): a PNG or "
            "JPEG file path, 'asset:<name>', or 'base64:' followed by the base64 of a PNG/JPEG."
        )
    )

    @field_validator("image")
    @classmethod
    def _readable(cls, v: str) -> str:
        # The size in the image's header is checked here, before any module decodes it: an
        # image bomb (a tiny file claiming 6000 x 6000 pixels) is refused with the deploy.
        if v.startswith("base64:"):
            try:
                data = base64.b64decode(v[len("base64:") :], validate=True)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"template image is not valid base64: {e}") from e
        elif not resolve_path(v).is_file():
            raise ValueError(f"template image not found: {resolve_path(v)}")
        else:
            try:
                data = read_image_file(resolve_path(v))
            except OSError as e:
                raise ValueError(f"template image cannot be read: {e.strerror or e}") from e
            except ImageRefused as e:
                raise ValueError(f"template image refused: {e}") from e
        try:
            check_image(data)
        except ImageRefused as e:
            raise ValueError(f"template image refused: {e}") from e
        return v


#: Names reid's ``backend`` takes: the built-ins (``combined``: onnx and hsv, weighted), then the
#: installed plugin embedders (entry point group ``edgeva.embedders``).
BACKENDS = ("onnx", "hsv", "combined", "triton", *sorted(set(load_embedders()) - {"onnx", "hsv", "triton"}))


class TritonOptions(BaseModel):
    """Where the ``triton`` backend's model is served (Triton or another KServe-V2 server)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field("localhost:8000", max_length=MAX_PATH_CHARS, json_schema_extra={"edgeva_path": "server"},
                     description="host:port (8000 HTTP, 8001 gRPC for Triton); the agent's --url-host "
                     "must allow the host.")
    protocol: Literal["http", "grpc"] = "http"
    model_name: str = Field("osnet_x1_0", max_length=MAX_NAME_CHARS, json_schema_extra=NOT_A_PATH,
                            description="Model name in the server's repository.")
    model_version: str = Field("", max_length=MAX_NAME_CHARS, json_schema_extra=NOT_A_PATH,
                               description="Empty: the server's default version.")
    input_name: str = Field("input", max_length=MAX_NAME_CHARS, description="Input tensor, [N, 3, 256, 128] FP32 (NCHW).")
    output_name: str = Field("output", max_length=MAX_NAME_CHARS, json_schema_extra=NOT_A_PATH,
                             description="Output tensor, [N, D] FP32 features.")
    binary: bool = Field(True, description="HTTP binary tensors; False for MLServer.")


class ReidConfig(ModuleConfig):
    """Arguments of the ``reid`` module."""

    type: Literal["reid"] = "reid"
    # crops come with the detections they were cut from; a frame needs boxes to cut
    ports: ClassVar[Ports] = Ports(consumes="crops + crop_index + detections | frame + tracks | frame + detections",
                                   produces="reid", passes="frame", when={"frame": "forward_frame"})
    gallery: list[Template] = Field(
        min_length=1, max_length=MAX_GALLERY, description="People to look for: [{name, image}, ...].",
        examples=[[{"name": "person-1", "image": "asset:demo_person.png"}]],
    )
    backend: Literal[BACKENDS] = Field(  # type: ignore[valid-type]
        "combined",
        description=(
            "onnx: CNN embedding (model) with onnxruntime, ~2-9 ms a crop on CPU. hsv: colour "
            "histograms of head-to-feet stripes, ~0.1 ms a crop, blind to shape. combined: both, "
            "weighted by cnn_weight (best on the bundled test set). triton: a re-id model "
            "(e.g. OSNet) on an inference server, see 'triton'; needs an explicit threshold."
        ),
    )
    model: str = Field(
        "asset:mobilenetv2_reid.onnx",
        max_length=MAX_PATH_CHARS,
        json_schema_extra={"edgeva_path": "read"},  # the agent confines it (agent/paths.py)
        description="onnx, combined: ONNX file (or asset:<name>) taking [N,3,256,128] ImageNet-normalised RGB.",
    )
    threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description=(
            "Cosine similarity a crop needs with its best template to be a match. Default per "
            f"backend: {DEFAULT_THRESHOLD} (no false match on the bundled test set). Raise it "
            "if other people are matched; lower it if the person is missed."
        ),
    )
    cnn_weight: float = Field(
        DEFAULT_CNN_WEIGHT,
        ge=0.0,
        le=1.0,
        description="combined: share of the CNN in the similarity; the HSV histogram gets 1 - cnn_weight.",
    )
    classes: ClassIds | None = Field(
        [0], description="Only boxes of these class ids are compared ([0]: COCO persons); null: all."
    )
    min_height: int = Field(
        24, ge=1, le=MAX_SIDE, description="Boxes lower than this (pixels) are skipped: too few pixels to tell."
    )
    threads: int = Field(2, ge=1, le=MAX_THREADS, description="onnx, combined: onnxruntime intra-op threads.")
    providers: list[ProviderName] = providers_field()
    provider_fallback: bool = fallback_field()
    max_batch: int = Field(16, ge=1, le=256, description="Crops per inference call (input buffer size).")
    embed_every: int = Field(
        10,
        ge=1,
        le=10000,
        description=(
            "With tracks upstream (a tracker): embed a track when it is new and again every "
            "embed_every frames, reusing its last embedding in between (a person's appearance "
            "changes slowly; 1: embed every track on every frame). Detections and crops have no "
            "identity across frames: they are embedded every frame."
        ),
    )
    forward_frame: bool = Field(
        False,
        description="Pass arrays['frame'] through (for a downstream annotate); off: metadata only.",
    )
    triton: TritonOptions = Field(default_factory=TritonOptions)

    @model_validator(mode="after")
    def _threshold_known(self) -> ReidConfig:
        if self.threshold is None and self.backend not in DEFAULT_THRESHOLD:  # triton, a plugin
            raise ValueError(f"backend {self.backend!r} needs an explicit threshold (it depends on the model)")
        return self

    @property
    def effective_threshold(self) -> float:
        """``threshold``, or the calibrated default of the backend."""
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLD[self.backend]


# Fields that need a new embedder (model reload, new connection): update() restarts for them.
_RESTART = {"backend", "model", "threads", "providers", "provider_fallback", "triton"}


class Reid(Module[ReidConfig]):
    """Compares every person crop of a frame with a gallery of templates (cosine similarity of
    appearance embeddings) and reports the ones that look like a template.

    Input, either of:
    - ``arrays["crops"]`` (N x 256 x 128 x 3 uint8 BGR, cut by the detector) with
      ``fields["crop_index"]`` (the detection each crop belongs to) and ``fields["detections"]``;
    - ``arrays["frame"]`` (H x W x 3 uint8 BGR) with ``fields["tracks"]`` (preferred: matches
      then carry a track id) or ``fields["detections"]``; the module cuts the boxes itself.
    A message without crops or frame is an error in the pipeline. Track ids are also attached
    to crops when the message has both tracks and detections (best box IoU >= 0.5).

    Output: ``msg.derive(reid=[...])``, one entry per box whose best template reaches the
    threshold: ``{"template": name, "similarity": float, "box": [x1, y1, x2, y2],
    "track_id": int | None}``; ``arrays["frame"]`` too when ``forward_frame``.
    Events (``ctx.emit``), one per match: ``{"event": "reid_match", "template",
    "similarity", "box", "track_id", "frame_id", "source"}`` (the agent rate-limits them).

    With tracks, a track is embedded when new and every ``embed_every`` frames after (its
    embedding is reused in between; predicted boxes of a detector ``interval`` are never cut);
    ``metrics()`` reports ``embeddings``, ``frames`` and ``embeddings_per_frame``.

    ``update`` applies ``gallery`` (re-embedded at once), ``threshold``, ``cnn_weight``,
    ``classes``, ``min_height``, ``max_batch``, ``embed_every`` and ``forward_frame`` live; ``backend``,
    ``model``, ``threads`` and ``triton`` restart the module.
    """

    config_class: ClassVar[type[ModuleConfig]] = ReidConfig

    def __init__(self, config: ReidConfig, ctx: ModuleContext) -> None:
        super().__init__(config, ctx)
        self._parts: list[Embedder] = []
        self._embedder: Embedder | None = None
        self._names: list[str] = []
        self._gallery = np.empty((0, 0), np.float32)
        self._crops = np.empty((0, CROP_H, CROP_W, 3), np.uint8)
        # track id -> (frame id of its embedding, embedding, frame id last seen)
        self._cache: dict[int, tuple[int, np.ndarray, int]] = {}
        self._emb = np.empty((0, 0), np.float32)  # this frame's embeddings, reused
        self._n_frames = self._n_embedded = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def setup(self) -> None:
        self._parts = self._make_parts(self.config)
        self._configure(self.config)

    def update(self, config: ReidConfig) -> bool:
        changed = {k for k in type(config).model_fields if getattr(config, k) != getattr(self.config, k)}
        if changed & _RESTART:
            return False
        self._configure(config)
        return True

    def close(self) -> None:
        for p in self._parts:
            p.close()
        self._parts, self._embedder = [], None

    def _configure(self, c: ReidConfig) -> None:
        """Everything that can change live: embedder weights, buffers and the gallery matrix.
        Templates are decoded and embedded before anything is swapped, so a bad gallery in an
        update raises and leaves the running one in place."""
        embedder = self._combine(c)
        crops = np.empty((len(c.gallery), CROP_H, CROP_W, 3), np.uint8)
        for t, out in zip(c.gallery, crops, strict=True):
            fit_crop(_load_image(t), out)  # one decoded image at a time
        gallery = embedder.embed(crops).copy()  # the embedder reuses its output buffer
        # Warm the batch shapes of a typical frame (first runs of a shape are slow) now rather
        # than on the first frames of the stream.
        embedder.embed(np.zeros((min(c.max_batch, 8), CROP_H, CROP_W, 3), np.uint8))
        if len(self._crops) < c.max_batch:
            self._crops = np.empty((c.max_batch, CROP_H, CROP_W, 3), np.uint8)
        self._embedder, self._gallery = embedder, gallery
        self._names = [t.name for t in c.gallery]
        self._cache = {}  # embeddings of another embedder/weighting do not compare
        self.config = c

    def describe(self) -> dict[str, str]:
        """For the deploy reply: the execution provider of the embedder (onnx embedders)."""
        provider = getattr(getattr(self, "_embedder", None), "provider", None)
        return {"provider": provider} if provider else {}

    def metrics(self) -> dict[str, float]:
        provider = getattr(getattr(self, "_embedder", None), "provider", None)
        return {
            **({f"provider_{provider}": 1.0} if provider else {}),
            "frames": self._n_frames,
            "embeddings": self._n_embedded,
            "embeddings_per_frame": round(self._n_embedded / self._n_frames, 3) if self._n_frames else 0.0,
        }

    def _make_parts(self, c: ReidConfig) -> list[Embedder]:
        embedders = load_embedders()
        return [embedders[name].from_args(c) for name in (("onnx", "hsv") if c.backend == "combined" else (c.backend,))]

    def _combine(self, c: ReidConfig) -> Embedder:
        if c.backend != "combined":
            return self._parts[0]
        cnn, hsv = self._parts
        return CombinedEmbedder([(cnn, c.cnn_weight), (hsv, 1.0 - c.cnn_weight)], c.max_batch)

    # -- per frame ---------------------------------------------------------------------------

    def process(self, msg: Message) -> Message:
        self._n_frames += 1
        if "crops" not in msg.arrays and msg.fields.get("tracks") is not None and "frame" in msg.arrays:
            emb, boxes, ids = self._track_embeddings(msg)
        else:
            crops, boxes, ids = self._inputs(msg)
            emb = self._embedder.embed(crops) if len(crops) else None
            self._n_embedded += len(crops)
        matches: list[dict] = []
        if emb is not None and len(boxes):
            sims = emb @ self._gallery.T  # N x templates
            best = sims.argmax(axis=1)
            thr = self.config.effective_threshold
            for k in np.flatnonzero(sims[np.arange(len(best)), best] >= thr):
                matches.append(
                    {
                        "template": self._names[best[k]],
                        "similarity": round(float(sims[k, best[k]]), 4),
                        "box": [float(v) for v in boxes[k]],
                        "track_id": ids[k],
                    }
                )
        for m in matches:
            self.ctx.emit(
                {"event": "reid_match", **m, "frame_id": msg.frame_id, "source": msg.source}
            )
        out = msg.derive(reid=matches)
        if self.config.forward_frame and "frame" in msg.arrays:
            out.arrays["frame"] = msg.arrays["frame"]
        return out

    def _track_embeddings(self, msg: Message) -> tuple[np.ndarray | None, list, list]:
        """(embeddings [N, D], boxes, track ids) of the wanted tracks: new or due ones are cut
        and embedded (one batch), the others reuse their cached embedding."""
        frame, fid, every = msg.arrays["frame"], msg.frame_id, self.config.embed_every
        h, w = frame.shape[:2]
        cache = self._cache
        boxes: list = []
        ids: list = []
        due: list[int] = []  # positions in boxes/ids that need a new embedding
        for t in msg.fields["tracks"]:
            box, tid = t["box"], int(t["id"])
            x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
            x2, y2 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
            if x2 - x1 < 2 or y2 - y1 < 2 or not self._wanted(box, t.get("class_id", 0)):
                continue
            c = cache.get(tid)
            if c is None or (not t.get("predicted") and not 0 <= fid - c[0] < every):
                if len(due) == len(self._crops):  # more people than max_batch: grow once
                    self._crops = np.concatenate([self._crops, np.empty_like(self._crops)])
                fit_crop(frame[y1:y2, x1:x2], self._crops[len(due)])
                due.append(len(boxes))
            else:
                cache[tid] = (c[0], c[1], fid)
            boxes.append(box[:4])
            ids.append(tid)
        if due:
            new = self._embedder.embed(self._crops[: len(due)])
            self._n_embedded += len(due)
            for j, k in enumerate(due):
                cache[ids[k]] = (fid, new[j].copy(), fid)
        if not boxes:
            return None, boxes, ids
        d = self._gallery.shape[1]
        if self._emb.shape[0] < len(boxes) or self._emb.shape[1] != d:
            self._emb = np.empty((max(len(boxes), 2 * self._emb.shape[0], 16), d), np.float32)
        emb = self._emb[: len(boxes)]
        for k, tid in enumerate(ids):
            emb[k] = cache[tid][1]
        if len(cache) > 256:  # forget tracks not seen for a while (bounded, rarely run)
            self._cache = {k: v for k, v in cache.items() if fid - v[2] <= 10 * every}
        return emb, boxes, ids

    def _wanted(self, box, class_id) -> bool:
        c = self.config
        return (c.classes is None or int(class_id) in c.classes) and box[3] - box[1] >= c.min_height

    def _inputs(self, msg: Message) -> tuple[np.ndarray, list, list]:
        """(crops [N,256,128,3], boxes, track ids) of the boxes to compare."""
        f = msg.fields
        if "crops" in msg.arrays:
            dets = f.get("detections") or []
            index = f.get("crop_index")
            if index is None or len(index) != len(msg.arrays["crops"]):
                raise ValueError("reid: arrays['crops'] needs fields['crop_index'], one per crop")
            keep = [k for k, d in enumerate(index) if self._wanted(dets[d], dets[d][5])]
            boxes = [dets[index[k]][:4] for k in keep]
            ids = _track_ids(boxes, f.get("tracks"))
            return msg.arrays["crops"][keep], boxes, ids
        frame = msg.arrays.get("frame")
        if frame is None:
            # A ModuleError: the runner refuses the message (counted) and goes on, as for any
            # input a module cannot use (the first messages of a link stream whose sender has
            # not yet widened what it sends to this app's needs: docs/protocol.md).
            raise NoImage("reid input has neither arrays['crops'] nor arrays['frame']")
        if f.get("tracks") is not None:
            items = [(t["box"], t.get("class_id", 0), t["id"]) for t in f["tracks"]]
        elif f.get("detections") is not None:
            items = [(d[:4], d[5], None) for d in f["detections"]]
        else:
            raise ValueError("reid: arrays['frame'] needs fields['tracks'] or fields['detections']")
        h, w = frame.shape[:2]
        boxes, ids = [], []
        for box, cid, tid in items:
            x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
            x2, y2 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
            if x2 - x1 < 2 or y2 - y1 < 2 or not self._wanted(box, cid):
                continue
            if len(boxes) == len(self._crops):  # more people than max_batch: grow once
                self._crops = np.concatenate([self._crops, np.empty_like(self._crops)])
            fit_crop(frame[y1:y2, x1:x2], self._crops[len(boxes)])
            boxes.append(box[:4])
            ids.append(tid)
        return self._crops[: len(boxes)], boxes, ids


def _load_image(t: Template) -> np.ndarray:
    """Decode a template's image (file or base64), or raise ModuleError naming it."""
    if t.image.startswith("base64:"):
        raw = base64.b64decode(t.image[len("base64:") :])
        where = "base64 data"
    else:
        path = resolve_path(t.image)
        try:
            raw = read_image_file(path)
        except (OSError, ImageRefused) as e:
            raise ModuleError(f"reid: template {t.name!r}: cannot read {path}: {e}") from e
        where = str(path)
    try:  # again here: the file may have changed since the deploy was checked
        check_image(raw)
    except ImageRefused as e:
        raise ModuleError(f"reid: template {t.name!r}: {where} refused: {e}") from e
    data = np.frombuffer(raw, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ModuleError(f"reid: template {t.name!r}: {where} is not a PNG/JPEG image")
    return img


def _track_ids(boxes: list, tracks: list[dict] | None) -> list[int | None]:
    """Track id of each box: the track whose box overlaps it best (IoU >= 0.5), else None."""
    if not tracks:
        return [None] * len(boxes)
    tb = np.asarray([t["box"] for t in tracks], np.float64).reshape(-1, 4)
    out: list[int | None] = []
    for b in boxes:
        x1, y1 = np.maximum(b[0], tb[:, 0]), np.maximum(b[1], tb[:, 1])
        x2, y2 = np.minimum(b[2], tb[:, 2]), np.minimum(b[3], tb[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = (b[2] - b[0]) * (b[3] - b[1]) + (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1]) - inter
        iou = inter / np.maximum(union, 1e-9)
        k = int(iou.argmax())
        out.append(int(tracks[k]["id"]) if iou[k] >= 0.5 else None)
    return out
