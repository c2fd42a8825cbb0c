"""The test RTSP server lives in ``control.bench_rtsp`` (``bench chaos`` runs it as its camera)."""

from edgeva.bench.rtsp import FFMPEG, RtspPeer, free_port

__all__ = ["FFMPEG", "RtspPeer", "free_port"]
