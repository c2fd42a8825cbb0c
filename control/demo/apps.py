"""The demo's three applications, as three separate deployments (so that sharing is real).

All three start with the same decoder and the same detector (same type, args and upstream): the
agent runs one of each and every app attaches to them. The tracking and RoI apps also share the
tracker. What differs is the end of each graph: the paper's tracking, RoI monitoring and person
re-identification applications (its section 5.1.2).
"""

from __future__ import annotations

from pathlib import Path

from modules.decoder import ASSETS

CLIP = "asset:vtest.mp4"
TEMPLATE = ASSETS / "demo_person.png"
# vtest.mp4 is 768x576: a zone on the middle of the road, which most pedestrians cross.
ZONE = [[330, 190], [640, 190], [640, 330], [330, 330]]


def _front(source: str, fps: float) -> dict:
    return {
        "decoder": {"type": "decoder", "args": {"source": source, "fps": fps}, "outputs": ["detector"]},
        "detector": {"type": "detector", "args": {"backend": "onnx", "crops": True}, "outputs": []},
    }


def demo_apps(source: str = CLIP, fps: float = 10.0, video: Path | None = None) -> list[dict]:
    """Deployments for the tracking, roi and reid apps; ``video``: where annotate writes."""
    tracking = _front(source, fps)
    tracking["detector"]["outputs"] = ["tracker"]
    tracking["tracker"] = {"type": "tracker", "args": {"algorithm": "sort", "forward_frame": video is not None},
                           "outputs": ["publish"]}
    tracking["publish"] = {"type": "publish", "args": {"fields": ["tracks"], "max_rate": 2}, "outputs": []}
    if video is not None:
        tracking["tracker"]["outputs"].append("annotate")
        tracking["annotate"] = {"type": "annotate", "outputs": [],
                                "args": {"output": str(video), "fps": fps, "polygons": {"crossing": ZONE}}}

    roi = _front(source, fps)
    roi["detector"]["outputs"] = ["tracker"]
    roi["tracker"] = dict(tracking["tracker"], outputs=["roi"])
    roi["roi"] = {"type": "roi", "args": {"polygons": {"crossing": ZONE}}, "outputs": []}

    reid = _front(source, fps)
    reid["detector"]["outputs"] = ["reid"]
    reid["reid"] = {"type": "reid", "args": {"gallery": [{"name": "person-1", "image": str(TEMPLATE)}]},
                    "outputs": []}
    return [{"app": "tracking", "modules": tracking}, {"app": "roi", "modules": roi}, {"app": "reid", "modules": reid}]
