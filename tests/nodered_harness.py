"""Test harness for control/nodered/flows.json: a headless Node-RED (from .nodered/, installed by
tools/install-nodered.sh) running the shipped flow file, and headless Chromium driven over the
DevTools protocol. Both say why when they are missing, so that the tests can skip."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from edgeva.control.broker import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "control" / "nodered" / "flows.json"
RED_JS = ROOT / ".nodered" / "node_modules" / "node-red" / "red.js"
DASHBOARD = ROOT / ".nodered" / "node_modules" / "@flowfuse" / "node-red-dashboard"
INSTALL_HINT = "run tools/install-nodered.sh (make nodered)"

# Headless, local only: the editor and admin API on 127.0.0.1 (the test triggers inject nodes
# through POST /inject/<id>), HTTP-in nodes and the dashboard on the same port.
SETTINGS = """\
module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {port},
    httpAdminRoot: "/",
    httpNodeRoot: "/",
    userDir: {userdir},
    credentialSecret: false,
    mqttReconnectTime: 1000,
    functionExternalModules: false,
    externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }}, modules: {{ allowInstall: false }} }},
    logging: {{ console: {{ level: "info", metrics: false, audit: false }} }},
    editorTheme: {{ tours: false, projects: {{ enabled: false }} }},
}};
"""


def missing_tools(chromium: bool = False) -> str | None:
    """Why the Node-RED tests cannot run here, or None."""
    if not shutil.which("node"):
        return f"node is not installed: {INSTALL_HINT}"
    if not RED_JS.exists():
        return f"Node-RED is not installed in .nodered/: {INSTALL_HINT}"
    if not DASHBOARD.exists():
        return f"@flowfuse/node-red-dashboard is not installed in .nodered/: {INSTALL_HINT}"
    if chromium and not shutil.which("chromium"):
        return f"chromium is not installed (Debian package chromium): {INSTALL_HINT}"
    return None


def flow_nodes() -> list[dict]:
    return json.loads(FLOWS.read_text())


def inject_id(name: str) -> str:
    """The id of the inject node called ``name`` in the shipped flow file."""
    ids = [n["id"] for n in flow_nodes() if n["type"] == "inject" and n.get("name") == name]
    assert len(ids) == 1, f"flows.json has {len(ids)} inject nodes named {name!r}"
    return ids[0]


class NodeRed:
    """``node red.js`` with the shipped flows.json (or ``flows``), the given environment and a
    temp userDir."""

    def __init__(self, workdir: Path, env: dict[str, str], flows: Path = FLOWS) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        userdir = workdir / "nodered"
        userdir.mkdir(parents=True, exist_ok=True)
        settings = userdir / "settings.js"
        settings.write_text(SETTINGS.format(port=self.port, userdir=json.dumps(str(userdir))))
        self.log = workdir / "nodered.log"
        self._logf = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            ["node", str(RED_JS), "-u", str(userdir), "-s", str(settings), str(flows)],
            cwd=userdir, stdout=self._logf, stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        if not wait_port("127.0.0.1", self.port, timeout=60.0):
            self.stop()
            raise AssertionError(f"Node-RED did not listen on {self.port}:\n{self.log_text()}")
        deadline = time.monotonic() + 60
        while "Started flows" not in self.log_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"Node-RED did not start its flows:\n{self.log_text()}")
            time.sleep(0.2)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def inject(self, name: str) -> None:
        """Click the inject node ``name``, as the editor's button does (admin API)."""
        req = urllib.request.Request(f"{self.base}/inject/{inject_id(name)}", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, f"POST /inject for {name!r}: HTTP {r.status}"

    def summary(self) -> dict:
        """The flow's own view: GET /edgeva/summary (an http in node of the flow)."""
        with urllib.request.urlopen(f"{self.base}/edgeva/summary", timeout=10) as r:
            return json.loads(r.read())

    def wait_summary(self, pred, what: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while True:
            try:
                last = self.summary()
                if pred(last):
                    return last
            except (urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                brief = {k: last.get(k) for k in ("devices", "apps", "events", "replies")}
                raise AssertionError(f"timeout waiting for {what}; the flow says {json.dumps(brief)[:3000]}"
                                     f"\nlog: {[line['text'] for line in last.get('log', [])][-15:]}"
                                     f"\nNode-RED:\n{self.log_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


class Chromium:
    """Headless Chromium, one page, driven over the DevTools protocol (websockets)."""

    def __init__(self, workdir: Path, width: int = 1400, height: int = 1500) -> None:
        from websockets.sync.client import connect

        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "chromium.log"
        self._logf = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        port = free_port()
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--mute-audio",
             # the machine's network is closed, and a page that is never shown must still paint
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-quic", "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
             "--disable-backgrounding-occluded-windows",
             f"--remote-debugging-port={port}", "--remote-allow-origins=*",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=self._logf, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        ws_url = None
        while ws_url is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if pages:
                    ws_url = pages[0]["webSocketDebuggerUrl"]
            except (urllib.error.URLError, ConnectionError, ValueError):
                pass
            if ws_url is None:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise AssertionError(f"chromium did not start:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.3)
        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=20)
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride",
                  width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=180))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r.get("result", {}).get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_text(self, pred, what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if pred(text):
                return text
            if time.monotonic() > deadline:
                # the head (what the page is) and the tail (where replies and messages land)
                shown = text if len(text) <= 4000 else f"{text[:2000]}\n[...]\n{text[-2000:]}"
                raise AssertionError(f"the page never showed {what}; it shows:\n{shown}")
            time.sleep(0.5)

    def screenshot(self, path: Path, clip: dict | None = None) -> bytes:
        """A PNG of the whole page (or ``clip``) after it has painted two more frames: a
        capture taken without that can hand back a frame painted before the last DOM change."""
        self.call("Runtime.evaluate", awaitPromise=True, expression=(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))"))
        if clip is None:  # the whole page: with many devices listed, the apps lie below the window
            clip = self.js("({x: 0, y: 0, width: document.documentElement.scrollWidth, "
                           "height: document.documentElement.scrollHeight})")
        params = {"format": "png", "captureBeyondViewport": True, "fromSurface": True, "clip": {**clip, "scale": 1}}
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def screenshot_until(self, path: Path, pred, timeout: float = 60.0) -> bytes:
        """Screenshots every 2 s until ``pred(png)`` holds or ``timeout`` passes; the last one."""
        deadline = time.monotonic() + timeout
        while True:
            png = self.screenshot(path)
            if pred(png) or time.monotonic() > deadline:
                return png
            time.sleep(2)

    def rect(self, selector_js: str) -> dict | None:
        """The page rectangle of the element ``selector_js`` evaluates to."""
        return self.js(f"(() => {{ const e = {selector_js}; if (!e) return null; "
                       "const r = e.getBoundingClientRect(); "
                       "return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()")

    def click(self, element_js: str) -> bool:
        """A real mouse click (press + release) in the middle of the element ``element_js``
        evaluates to, as widgets that open on mouse events need; False if there is none."""
        self.js(f"(() => {{ const e = {element_js}; if (e) e.scrollIntoView({{block: 'center'}}); }})()")
        r = self.js(f"(() => {{ const e = {element_js}; if (!e) return null; const r = e.getBoundingClientRect(); "
                    "return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        if not r:
            return False
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=r["x"], y=r["y"], button="left", clickCount=1)
        return True

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


def blank(png: bytes) -> bool:
    """True for a screenshot of one colour (a page Chromium has not painted)."""
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return img is None or int(img.max()) == int(img.min())


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]
