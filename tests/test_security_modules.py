"""Issue 20, the modules' holes: what a tenant's module args may reach and cost.

Real agents, real mosquitto with the shipped ACL (``tests/test_security_control.py``'s fleet):
hole 4 (every path and server arg confined), 5 (image bombs, gallery length), 11 (threads),
14 (URL hosts; failures that tell nothing), 16 (outputs private), the decoder's waits (part of
hole 8) and the size of what goes into every event."""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.brokers import Broker
from tests.test_security_control import DEC, app, start_fleet, stop_fleet

pytestmark = pytest.mark.slow


def bomb_jpeg(width: int = 6000, height: int = 6000) -> bytes:
    """A real 8 x 8 JPEG (~600 bytes) whose start-of-frame claims ``width`` x ``height``."""
    ok, enc = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    data = bytearray(enc.tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def refused(reply: dict, code: str, path: str, words: str = "") -> None:
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"]["path"] == path and words in reply["error"]["message"], reply


REID = {"type": "reid", "args": {"backend": "hsv", "gallery": [{"name": "p", "image": "asset:demo_person.png"}]}}


def test_paths_are_confined_for_reid_models_and_inference_servers(mosquitto_auth: Broker, tmp_path: Path) -> None:
    """Hole 4: reid's ``model`` was not marked as a path: a private file outside every media
    directory loaded, and the error told whether a path existed. The triton backends' server
    URLs reached any host. Now both are confined, and an existing private file and a missing
    one get the same refusal."""
    media = tmp_path / "media"
    media.mkdir()
    private = tmp_path / "private" / "reid.onnx"
    private.parent.mkdir()
    private.write_bytes((Path(__file__).parent.parent / "modules/assets/mobilenetv2_reid.onnx").read_bytes())
    f = start_fleet(mosquitto_auth, tmp_path, "--media-dir", str(media), "--url-host", "cam-1")
    acme = f.cmd("acme")
    try:
        msgs = []
        for name, model in (("r1", str(private)), ("r2", str(tmp_path / "private" / "missing.onnx"))):
            dep = {"app": name, "modules": {"r": {**REID, "args": {**REID["args"], "backend": "onnx", "model": model}}}}
            r = acme.send("deploy", dep, timeout=30)
            refused(r, "bad_args", "modules.r.args.model", "outside the media directories")
            msgs.append(r["error"]["message"].replace(model, "X"))
        assert msgs[0] == msgs[1], msgs  # existence does not leak
        triton = {**REID["args"], "backend": "triton", "threshold": 0.5, "triton": {"url": "10.1.2.3:8000"}}
        r = acme.send("deploy", {"app": "t", "modules": {"r": {"type": "reid", "args": triton}}}, timeout=30)
        refused(r, "bad_args", "modules.r.args.triton.url", "--url-host")
        det = {"backend": "triton", "model_name": "m", "url": "http://10.1.2.3:8000"}
        r = acme.send("deploy", {"app": "d", "modules": {"d": {"type": "detector", "args": det}}}, timeout=30)
        refused(r, "bad_args", "modules.d.args.url", "--url-host")
        assert acme.send("status", {})["result"]["apps"] == {}
    finally:
        stop_fleet(f)


def test_image_bombs_and_oversized_args_are_refused_before_anything_runs(mosquitto_auth: Broker,
                                                                          tmp_path: Path) -> None:
    """Hole 5: a 631-byte JPEG whose header claims 6000 x 6000 decoded fully (three took reid
    from 56 to 466 MB), and a gallery had no length limit. Hole 11: ``threads=300`` made 301
    OS threads. Hole 8 (part): the decoder's waits were unbounded. A 60 KB ``source_id`` went
    into every event. Each is now refused with ``bad_args`` at its path; a running reid's
    memory does not move when an update carries bombs, and it keeps running."""
    bomb = "base64:" + base64.b64encode(bomb_jpeg()).decode()
    assert len(bomb) < 1200
    media = tmp_path / "media"
    media.mkdir()
    (media / "bomb.jpg").write_bytes(bomb_jpeg())
    f = start_fleet(mosquitto_auth, tmp_path, "--media-dir", str(media))
    acme = f.cmd("acme")
    try:
        running = {"app": "ok", "modules": {
            "dec": {"type": "decoder", "args": {"source": "synthetic", "fps": 2, "width": 128, "height": 128},
                    "outputs": ["det"]},
            "det": {"type": "detector", "args": {"backend": "opencv-hog"}, "outputs": ["r"]},
            "r": REID}}
        assert acme.send("deploy", running, timeout=60)["ok"]
        pid = acme.send("status", {"app": "ok"})["result"]["apps"]["ok"]["modules"]["r"]["pid"]
        before = rss_kb(pid)
        gallery = [{"name": f"b{i}", "image": bomb} for i in range(3)]
        r = acme.send("update", {"app": "ok", "module": "r", "args": {"gallery": gallery}}, timeout=30)
        refused(r, "bad_args", "args.gallery[0].image", "6000 x 6000")
        time.sleep(0.5)
        assert rss_kb(pid) - before < 8 * 1024, (before, rss_kb(pid))
        assert acme.send("status", {"app": "ok"})["result"]["apps"]["ok"]["modules"]["r"]["pid"] == pid  # not restarted

        def deploy(name: str, module: dict) -> dict:
            return acme.send("deploy", {"app": name, "modules": {"m": module}}, timeout=30)

        refused(deploy("b1", {**REID, "args": {**REID["args"], "gallery": gallery}}), "bad_args",
                "modules.m.args.gallery[0].image", "MAX_IMAGE_PIXELS")
        refused(deploy("b2", {**REID, "args": {**REID["args"], "gallery": [{"name": "f", "image": str(media / "bomb.jpg")}]}}),
                "bad_args", "modules.m.args.gallery[0].image", "6000 x 6000")
        many = [{"name": f"p{i}", "image": "asset:demo_person.png"} for i in range(65)]
        refused(deploy("b3", {**REID, "args": {**REID["args"], "gallery": many}}), "bad_args", "modules.m.args.gallery")
        refused(deploy("b4", {**REID, "args": {**REID["args"], "backend": "onnx", "threads": 300}}), "bad_args",
                "modules.m.args.threads")
        refused(deploy("b5", {"type": "detector", "args": {"threads": 300}}), "bad_args", "modules.m.args.threads")
        for arg in ("open_timeout_s", "fail_fast_s", "read_timeout_s"):
            refused(deploy("b6", {**DEC, "args": {**DEC["args"], arg: 1000}}), "bad_args", f"modules.m.args.{arg}")
        refused(deploy("b7", {**DEC, "args": {**DEC["args"], "source_id": "s" * 60000}}), "bad_args",
                "modules.m.args.source_id")
        assert list(acme.send("status", {})["result"]["apps"]) == ["ok"]
    finally:
        stop_fleet(f)


class _SilentPort:
    """A TCP port that accepts and then says nothing (an open port that is no RTSP server)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _closed_port() -> int:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_url_hosts_are_listed_by_the_operator_and_failures_tell_nothing(mosquitto_auth: Broker,
                                                                          tmp_path: Path) -> None:
    """Hole 14: with no host list a tenant's decoder connected anywhere, and how fast it failed
    told an open port from a closed one. Now no URL is reached until the operator lists hosts
    (``--url-host``), and a failed open takes ``open_timeout_s`` with the same words either way."""
    f = start_fleet(mosquitto_auth, tmp_path, "--url-host", "")  # the default: no host listed
    try:
        src = {**DEC, "args": {"source": f"rtsp://127.0.0.1:{_closed_port()}/x"}}
        refused(f.cmd("acme").send("deploy", app("u", src), timeout=30), "bad_args", "modules.dec.args.source",
                "connects to no host until its operator lists them")
    finally:
        stop_fleet(f)
    f = start_fleet(mosquitto_auth, tmp_path / "2", "--url-host", "127.0.0.1/32")
    silent = _SilentPort()
    try:
        assert f.cmd("acme").send("deploy", app("warm"), timeout=30)["ok"]  # first module start: imports
        assert f.cmd("acme").send("remove", {"app": "warm"}, timeout=30)["ok"]
        got = {}
        for kind, port in (("closed", _closed_port()), ("open", silent.port)):
            url = f"rtsp://127.0.0.1:{port}/x"
            t0 = time.monotonic()
            r = f.cmd("acme").send("deploy", app(kind, {**DEC, "args": {"source": url, "open_timeout_s": 1.5}}),
                                   timeout=60)
            got[kind] = (time.monotonic() - t0, r["error"]["code"], r["error"]["message"].replace(url, "URL"))
        print("failed opens (s, code, message):", got)
        assert got["closed"][1:] == got["open"][1:], got
        assert got["closed"][1] == "setup_failed", got
        assert got["closed"][0] >= 1.4, got  # a refused connection fails in a millisecond
        assert abs(got["closed"][0] - got["open"][0]) < 1.0, got
    finally:
        silent.close()
        stop_fleet(f)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: reads as another uid")
def test_outputs_are_private_to_the_tenant(mosquitto_auth: Broker, tmp_path: Path) -> None:
    """Hole 16: tenant outputs were 0755/0644, and another local user read a tenant's video.
    Now the tenant's output directory is 0700 and its files 0600: ``nobody`` reads nothing."""
    root = Path(tempfile.mkdtemp(prefix="edgeva-out-", dir="/tmp"))  # world-traversable, unlike tmp_path
    root.chmod(0o755)
    f = start_fleet(mosquitto_auth, tmp_path, "--output-root", str(root))
    try:
        video = root / "acme" / "v.avi"
        dep = app("v")
        dep["modules"]["dec"]["outputs"] = ["pub", "ann"]
        dep["modules"]["ann"] = {"type": "annotate", "args": {"output": str(video), "codec": "MJPG"}}
        assert f.cmd("acme").send("deploy", dep, timeout=30)["ok"]
        f.tenants["acme"].wait(f"edgeva/v1/{f.device}/acme/events/v", lambda ms: len(ms) >= 5, timeout=20)
        assert f.cmd("acme").send("remove", {"app": "v"}, timeout=30)["ok"]
        assert video.stat().st_size > 0
        assert (video.parent.stat().st_mode & 0o777, video.stat().st_mode & 0o777) == (0o700, 0o600)
        probe = ("import os, sys\nos.setgid(65534); os.setuid(65534)\n"
                 "for p in sys.argv[1:]:\n"
                 "    try:\n        open(p, 'rb').read(1); print('read', p)\n"
                 "    except PermissionError:\n        pass\n")
        out = subprocess.run([sys.executable, "-c", probe, str(video)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout == "", (out.stdout, out.stderr)
    finally:
        stop_fleet(f)
        subprocess.run(["rm", "-rf", str(root)], check=False)
