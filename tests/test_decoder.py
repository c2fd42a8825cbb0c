"""The decoder against real sources: the bundled clip, small clips written here, a local RTSP
server (tests/rtsp_peer.py) that is killed and restarted, unreachable URLs and cameras.

The module is driven as the runner drives it: setup, then pace + produce(alloc) per frame,
with an alloc that hands out numpy arrays, then close."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edgeva.modules.base import NO_FRAME, ModuleContext, ModuleError
from edgeva.modules.decoder import Decoder, DecoderConfig
from edgeva.modules.sources import capture
from edgeva.modules.sources.preprocess import Normalize, Preprocess
from tests.rtsp_peer import FFMPEG, RtspPeer


def make(**args) -> Decoder:
    d = Decoder(
        DecoderConfig(**args), ModuleContext(name="dec", log=logging.getLogger("test.decoder"))
    )
    d.setup()
    return d


def step(d: Decoder):
    """One turn of the runner's source loop: (message, arrays) or (None, {}) at the end."""
    arrays: dict[str, np.ndarray] = {}

    def alloc(name: str, shape: tuple, dtype) -> np.ndarray:
        arrays[name] = np.empty(shape, dtype)
        return arrays[name]

    d.pace()
    msg = d.produce(alloc)
    return msg, arrays


def frames(d: Decoder, n: int) -> list:
    """The next n frames, skipping NO_FRAME turns as the runner does."""
    out = []
    while len(out) < n:
        msg, arrays = step(d)
        if msg is None:
            break
        if msg is not NO_FRAME:
            out.append((msg, arrays))
    return out


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """6 frames of 64x48 whose gray level encodes the frame index (0, 40, 80...)."""
    path = tmp_path / "levels.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(6):
        w.write(np.full((48, 64, 3), i * 40, np.uint8))
    w.release()
    return path


def level(arrays: dict) -> int:
    return round(float(arrays["frame"].mean()) / 40)


# -- files -------------------------------------------------------------------------------------
def test_bundled_clip_size_ids_fields() -> None:
    d = make(source="asset:vtest.mp4", fps=0)
    got = frames(d, 5)
    d.close()
    assert [m.frame_id for m, _ in got] == [0, 1, 2, 3, 4]
    assert got[0][1]["frame"].shape == (576, 768, 3) and got[0][1]["frame"].dtype == np.uint8
    assert got[0][1]["frame"].std() > 10  # a real picture, written in place
    assert got[0][0].fields == {"width": 768, "height": 576}
    assert got[0][0].source == "vtest" and not d.live
    assert d.output_bytes() >= 768 * 576 * 3


def test_loop_keeps_counting_and_max_frames_ends(clip: Path) -> None:
    d = make(source=str(clip), fps=0, max_frames=14)
    got = frames(d, 20)
    d.close()
    assert [m.frame_id for m, _ in got] == list(range(14))
    assert [level(a) for _, a in got] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1]


def test_no_loop_ends_at_the_end(clip: Path) -> None:
    d = make(source=str(clip), fps=0, loop=False)
    assert len(frames(d, 20)) == 6
    d.close()


def test_pacing_follows_fps() -> None:
    # Baseline in the same run: the same 12 frames unpaced (fps=0) show what decoding alone
    # costs on this machine now; pacing may add at most that on top of 12 periods.
    # The clock starts before frame 0, on which pacing anchors its schedule (frame i is due
    # i periods after it): a slow frame 0 cannot make the 12 that follow look early.
    u = make(source="asset:vtest.mp4", fps=0)
    t = time.monotonic()
    step(u)
    frames(u, 12)
    unpaced = time.monotonic() - t
    u.close()
    d = make(source="asset:vtest.mp4", fps=40)
    t = time.monotonic()
    step(d)
    frames(d, 12)
    elapsed = time.monotonic() - t
    d.close()
    nominal = 12 / 40
    assert elapsed >= nominal, (elapsed, unpaced)  # never faster than fps
    assert elapsed < 1.6 * nominal + 2 * unpaced, (elapsed, unpaced)  # nor much slower


def test_resize() -> None:
    d = make(source="asset:vtest.mp4", fps=0, width=320, height=240)
    msg, arrays = step(d)
    d.close()
    assert arrays["frame"].shape == (240, 320, 3)
    assert msg.fields == {"width": 320, "height": 240}


def test_update_applies_rate_and_max_frames_live_restarts_otherwise(clip: Path) -> None:
    d = make(source=str(clip), fps=0)
    assert d.update(d.config.model_copy(update={"max_frames": 3}))
    assert d.update(d.config.model_copy(update={"fps": 50.0}))
    got = frames(d, 10)
    assert len(got) == 3  # max_frames applied in place
    assert d._period == pytest.approx(1 / 50)
    assert not d.update(d.config.model_copy(update={"width": 32}))
    assert not d.update(d.config.model_copy(update={"color": "rgb"}))
    d.close()


# -- preprocessing -----------------------------------------------------------------------------
def test_preprocess_exact_values() -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0] = (10, 20, 30)
    bgr[1, 2] = (255, 0, 51)
    out = np.empty((2, 3, 3), np.uint8)
    Preprocess(3, 2, color="rgb").apply(bgr, out)
    assert out[0, 0].tolist() == [30, 20, 10] and out[1, 2].tolist() == [51, 0, 255]

    chw = np.empty((3, 2, 3), np.uint8)
    Preprocess(3, 2, layout="chw").apply(bgr, chw)
    assert chw[:, 1, 2].tolist() == [255, 0, 51] and chw.shape == (3, 2, 3)

    p = Preprocess(3, 2, color="rgb", layout="chw", normalize=Normalize(mean=(0.5,), std=(0.5,)))
    t = np.empty(p.shape, p.dtype)
    p.apply(bgr, t)
    assert t.dtype == np.float32 and t.shape == (3, 2, 3)
    assert t[:, 1, 2].tolist() == pytest.approx([51 / 255 * 2 - 1, -1.0, 1.0], abs=1e-6)
    assert t[:, 0, 1].tolist() == pytest.approx([-1.0, -1.0, -1.0])

    g = Preprocess(3, 2, color="gray", normalize=Normalize(scale=1.0, mean=(100,), std=(2,)))
    gt = np.empty(g.shape, g.dtype)
    g.apply(bgr, gt)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert gt.shape == (2, 3, 1)
    np.testing.assert_allclose(gt[..., 0], (gray.astype(np.float64) - 100) / 2, atol=1e-5)


@pytest.mark.parametrize("color", ["bgr", "rgb", "gray"])
@pytest.mark.parametrize("layout", ["hwc", "chw"])
@pytest.mark.parametrize(
    "norm", [None, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]
)
def test_decoder_preprocessing_matches_reference(
    color: str, layout: str, norm: dict | None
) -> None:
    if color == "gray" and norm:
        norm = {"mean": [0.5], "std": [0.25]}
    d = make(
        source="synthetic",
        fps=0,
        width=64,
        height=48,
        color=color,
        layout=layout,
        normalize=norm,
        keep_original=True,
    )
    step(d)
    msg, arrays = step(d)
    frame = arrays["frame"]
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and msg.frame_id == 1
    ref = {
        "bgr": frame,
        "rgb": frame[..., ::-1],
        "gray": cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[..., None],
    }[color]
    ref = ref.astype(np.float64)
    if norm:
        ref = (ref / 255 - np.asarray(norm["mean"])) / np.asarray(norm["std"])
    if layout == "chw":
        ref = ref.transpose(2, 0, 1)
    tensor = arrays.get("tensor", frame)
    assert tensor.dtype == (np.float32 if norm else np.uint8)
    assert tensor.shape == ref.shape
    np.testing.assert_allclose(tensor, ref, atol=1e-5)
    assert d.output_bytes() >= frame.nbytes + tensor.nbytes * ("tensor" in arrays)
    d.close()


def test_preprocessed_frame_replaces_original_without_keep_original() -> None:
    norm = {"mean": [0.0], "std": [1.0], "scale": 1 / 255}
    d = make(
        source="asset:vtest.mp4",
        fps=0,
        width=64,
        height=32,
        color="rgb",
        layout="chw",
        normalize=norm,
    )
    _, arrays = step(d)
    d.close()
    assert set(arrays) == {"frame"}
    assert arrays["frame"].shape == (3, 32, 64) and arrays["frame"].dtype == np.float32
    assert (
        arrays["frame"].min() >= 0.0
        and arrays["frame"].max() <= 1.0
        and arrays["frame"].std() > 0.01
    )
    assert d.output_bytes() >= 3 * 32 * 64 * 4


@pytest.mark.parametrize(
    "bad",
    [
        {"fourcc": "mjpeg"},
        {"rtsp_transport": "http"},
        {"color": "gray", "normalize": {"mean": [1, 2, 3]}},
        {"normalize": {"std": [1, 0, 1]}},
        {"normalize": {"mean": [1, 2]}},
        {"reconnect_s": 0},
    ],
)
def test_config_refuses_nonsense(bad: dict) -> None:
    with pytest.raises(ValidationError):
        DecoderConfig(source="synthetic", **bad)


# -- cameras -----------------------------------------------------------------------------------
def test_camera_config_and_missing_device() -> None:
    cfg = DecoderConfig(source="/dev/video9", width=1280, height=720, fps=30, fourcc="MJPG")
    assert cfg.fourcc == "MJPG" and capture.is_camera(cfg.source) and capture.is_camera("0")
    with pytest.raises(ModuleError, match="cannot open '/dev/video9': no such device"):
        make(source="/dev/video9")
    with pytest.raises(ModuleError, match="cannot open '9': no such device"):
        make(source="9")


# -- network streams ---------------------------------------------------------------------------
def test_unreachable_url_is_refused_at_setup_in_open_timeout_s() -> None:
    """A refused connection (a closed port) fails in a millisecond; a failed first open takes
    ``open_timeout_s`` all the same (issue 20 hole 14), so that a tenant cannot tell a closed
    port from a silent host by how fast its deploy is refused."""
    t = time.monotonic()
    with pytest.raises(ModuleError, match="cannot open 'rtsp://127.0.0.1:9/none'"):
        make(source="rtsp://127.0.0.1:9/none", open_timeout_s=1.0)
    assert 1.0 <= time.monotonic() - t < 4.0


def test_fail_fast_s_retries_the_first_open_before_refusing() -> None:
    t = time.monotonic()
    with pytest.raises(ModuleError, match="cannot open"):
        make(source="rtsp://127.0.0.1:9/none", fail_fast_s=0.8, reconnect_s=0.2, open_timeout_s=0.3)
    # attempts at 0 and 0.5 s, each taking open_timeout_s (the upper bound: under the 0.8 s
    # window plus one open_timeout_s and slack, so a machine however loaded passes)
    assert 0.5 < time.monotonic() - t < 0.8 + 5.0


def test_waits_are_bounded() -> None:
    """Issue 20 hole 8: a deploy (and a restart) waits on these; each has a maximum."""
    for arg in ("open_timeout_s", "read_timeout_s", "fail_fast_s", "reconnect_s"):
        with pytest.raises(ValidationError, match="less than or equal"):
            DecoderConfig(source="synthetic", **{arg: 1000})
    with pytest.raises(ValidationError, match="at most 128"):
        DecoderConfig(source="synthetic", source_id="s" * 60000)


def test_ffmpeg_options_are_scoped_to_the_open() -> None:
    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
    assert (
        capture.open_stream(
            "rtsp://127.0.0.1:9/x", transport="udp", open_timeout_s=1, read_timeout_s=1
        )
        is None
    )
    assert "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ


needs_ffmpeg = pytest.mark.skipif(not Path(FFMPEG).exists(), reason="needs /usr/bin/ffmpeg")


@pytest.fixture
def peer(tmp_path: Path):
    with RtspPeer(tmp_path) as p:
        yield p


def _restart_later(peer: RtspPeer, after_s: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(after_s), peer.start()), daemon=True)
    t.start()
    return t


@needs_ffmpeg
def test_rtsp_frames_then_reconnect_with_no_frame_sentinel(
    peer: RtspPeer, caplog
) -> None:
    """With NO_FRAME: produce answers promptly while the server is down."""
    caplog.set_level(logging.INFO, "test.decoder")
    d = make(source=peer.url, reconnect_s=0.2, reconnect_max_s=0.4, read_timeout_s=2)
    assert d.live and d.output_bytes() >= 320 * 240 * 3
    got = frames(d, 5)
    assert [m.frame_id for m, _ in got] == [0, 1, 2, 3, 4]
    assert got[0][1]["frame"].shape == (240, 320, 3) and got[-1][1]["frame"].std() > 10
    assert got[-1][0].fields == {"width": 320, "height": 240, "reconnects": 0}

    peer.stop()
    restarter = _restart_later(peer, 1.0)
    ids, idle, slowest = [], 0, 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        t = time.monotonic()
        msg, arrays = step(d)
        slowest = max(slowest, time.monotonic() - t)
        if msg is NO_FRAME:
            idle += 1
            continue
        assert msg is not None, "a live source must not end when its server goes away"
        ids.append(msg.frame_id)
        last = msg
        if msg.fields["reconnects"] == 1 and len(ids) >= 3:
            break
    restarter.join()
    d.close()
    assert idle >= 2  # the runtime got control back while the server was down
    assert slowest < 5.0  # bounded: one wait step plus one (refused) open attempt at most
    assert ids == list(range(5, 5 + len(ids)))  # buffered frames, then the new stream's
    assert last.fields["reconnects"] == 1
    assert sum("reconnected" in r.getMessage() for r in caplog.records) == 1
    assert sum("read failed" in r.getMessage() for r in caplog.records) == 1


@needs_ffmpeg
@pytest.mark.slow
def test_rtsp_fps_thins_a_live_stream(peer: RtspPeer) -> None:
    d = make(source=peer.url, fps=5)
    step(d)
    t = time.monotonic()
    frames(d, 6)
    rate = 6 / (time.monotonic() - t)
    d.close()
    assert 0.4 < rate / 5 < 1.5, rate  # the peer sends 25 fps; 4 of 5 are skipped, not queued


@needs_ffmpeg
def test_rtsp_server_gone_without_reconnect_ends_the_stream(peer: RtspPeer) -> None:
    d = make(source=peer.url, reconnect=False, read_timeout_s=2)
    assert len(frames(d, 2)) == 2
    peer.stop()
    t = time.monotonic()
    got = frames(d, 200)
    d.close()
    assert len(got) < 200 and time.monotonic() - t < 2 + 5.0  # read_timeout_s, plus slack


class _Clock:
    """Stands in for the ``time`` module in capture: monotonic() and sleep() on a fake clock,
    so that the schedule of attempts is exact however loaded the machine is."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class _Dropping:
    """A capture whose stream has just gone: grab fails (as a dead RTSP server's does)."""

    def grab(self) -> bool:
        return False

    def release(self) -> None:
        pass


def test_reconnect_backs_off_doubling_to_the_cap_and_resets_after_a_success(monkeypatch) -> None:
    """Attempts reconnect_s apart, doubling up to reconnect_max_s (three doublings away);
    each step waits at most max_wait_s; after a successful reconnect the next outage starts
    again at reconnect_s. Driven through the real drop path (grab fails)."""
    clock = _Clock()
    monkeypatch.setattr(capture, "time", clock)
    attempts: list[float] = []
    results = iter([_Dropping(), None, None, None, None, None, _Dropping(), None, None, _Dropping()])

    def opener():
        attempts.append(clock.now)
        return next(results)

    live = capture.LiveCapture(
        opener, name="t", reconnect_s=0.1, reconnect_max_s=0.8, log=logging.getLogger("t")
    )
    assert live.open(fail_fast_s=0)

    def outage() -> list[float]:
        """Drop the stream, reconnect step by step; the attempts' times after the drop."""
        dropped_at, k = clock.now, len(attempts)
        assert not live.grab() and not live.connected
        steps = 0
        while not live.reconnect(max_wait_s=0.15):
            steps += 1
            assert steps < 100
        assert live.connected
        return [t - dropped_at for t in attempts[k:]]

    first = outage()  # five failures, then a success
    assert np.diff([0.0, *first]) == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.8, 0.8], abs=1e-9)
    second = outage()  # the success reset the delay: 0.1 again, not 0.8
    assert np.diff([0.0, *second]) == pytest.approx([0.1, 0.2, 0.4], abs=1e-9)
    assert live.reconnects == 2
    assert clock.sleeps and max(clock.sleeps) <= 0.15 + 1e-9  # every step is bounded
