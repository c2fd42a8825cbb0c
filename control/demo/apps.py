"""The demo's three applications, as three separate deployments (so that sharing is real).

All three start with the same decoder, detector and tracker (same type, args and upstream): the
agent runs one of each and every app attaches to them. What differs is the end of each graph:
the paper's tracking, RoI monitoring and person re-identification applications (its section
5.1.2); reid takes the tracker's tracks, so it embeds a person when first seen and every few
frames after, not every crop of every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLIP = "asset:vtest.mp4"
#: ``edgeva demo``'s defaults (``--seconds``, ``--fps``, ``--out``), also ``run_demo``'s
SECONDS, FPS, OUT_DIR = 60.0, 10.0, "out"
# A bundled image, named as an asset: no path of this machine in a deployment (the agent confines
# paths to its media directories; an asset is allowed everywhere).
TEMPLATE = "asset:demo_person.png"
# vtest.mp4 is 768x576: a zone on the middle of the road, which most pedestrians cross.
ZONE = [[330, 190], [640, 190], [640, 330], [330, 330]]


@dataclass(frozen=True)
class Tuning:
    """The demo's cost knobs (module args). The defaults hold the clip's 10 fps on one core of
    the development machine (about a 2-core AVX2 VM's compute): see README, Performance."""

    interval: int = 2  # detector: inference on every k-th frame, the tracker predicts between
    threads: int = 2  # detector: onnxruntime threads
    embed_every: int = 10  # reid: re-embed a track every N frames


def _front(source: str, fps: float, t: Tuning) -> dict:
    det = {"backend": "onnx", "threads": t.threads}
    if t.interval != 1:
        det["interval"] = t.interval
    return {
        "decoder": {"type": "decoder", "args": {"source": source, "fps": fps}, "outputs": ["detector"]},
        "detector": {"type": "detector", "args": det, "outputs": ["tracker"]},
        # forward_frame: reid cuts its crops from the frame (and annotate draws on it).
        "tracker": {"type": "tracker", "args": {"algorithm": "sort", "forward_frame": True}, "outputs": []},
    }


def demo_apps(source: str = CLIP, fps: float = 10.0, video: Path | None = None,
              tuning: Tuning | None = None) -> list[dict]:
    """Deployments for the tracking, roi and reid apps; ``video``: where annotate writes."""
    t = tuning or Tuning()
    tracking = _front(source, fps, t)
    tracking["tracker"]["outputs"] = ["publish"]
    tracking["publish"] = {"type": "publish", "args": {"fields": ["tracks"], "max_rate": 2}, "outputs": []}
    if video is not None:
        tracking["tracker"]["outputs"].append("annotate")
        tracking["annotate"] = {"type": "annotate", "outputs": [],
                                "args": {"output": str(video), "fps": fps, "polygons": {"crossing": ZONE}}}

    roi = _front(source, fps, t)
    roi["tracker"]["outputs"] = ["roi"]
    roi["roi"] = {"type": "roi", "args": {"polygons": {"crossing": ZONE}}, "outputs": []}

    reid = _front(source, fps, t)
    reid["tracker"]["outputs"] = ["reid"]
    reid["reid"] = {"type": "reid", "outputs": [],
                    "args": {"gallery": [{"name": "person-1", "image": TEMPLATE}],
                             "embed_every": t.embed_every}}
    return [{"app": "tracking", "modules": tracking}, {"app": "roi", "modules": roi}, {"app": "reid", "modules": reid}]
