"""Run the demo: embedded broker (or a given one), an agent in this process, three apps deployed
over MQTT like any operator would, live per-app lines, then a summary, a plot and a video."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from edgeva.control.demo.apps import CLIP, FPS, OUT_DIR, SECONDS, Tuning, demo_apps
from edgeva.control.demo.report import plot_latency, summarize

log = logging.getLogger("edgeva.demo")
DEVICE = "demo"


class _Live:
    """Per-app lines, redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, apps: list[str], seconds: float) -> None:
        self.apps, self.seconds = apps, seconds
        self.tty = sys.stdout.isatty()
        self.drawn = 0
        self.last_print = 0.0
        self.prev: dict[str, tuple[float, int]] = {}

    def show(self, core, elapsed: float) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last_print < 5 and elapsed < self.seconds:
            return
        self.last_print = now
        done = min(1.0, elapsed / self.seconds)
        bar = "#" * int(done * 30) + "." * (30 - int(done * 30))
        lines = [f"[{bar}] {elapsed:5.1f}/{self.seconds:.0f} s"]
        for name in self.apps:
            app = core.apps.get(name)
            if app is None:
                continue
            st = app.stats
            t0, f0 = self.prev.get(name, (now, st.frames))
            fps = (st.frames - f0) / (now - t0) if now > t0 else 0.0
            self.prev[name] = (now, st.frames)
            recent = st.recent_ms(20).tolist()
            lat = sorted(recent)[len(recent) // 2] if recent else float("nan")
            lines.append(f"  {name:<9} frames {st.frames:5d}  {fps:5.1f} fps  latency p50 {lat:7.1f} ms"
                         f"  dropped {st.dropped:3d}  events {st.events:5d}")
        if self.tty and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}A")
        sys.stdout.write("\n".join(line + ("\x1b[K" if self.tty else "") for line in lines) + "\n")
        sys.stdout.flush()
        self.drawn = len(lines)


#: the demo agent's metrics period (the modules' reports and the published metrics alike):
#: shorter than a deployed agent's, so that a short run still gathers a few
METRICS_S = 1.0


def run_demo(
    seconds: float = SECONDS,
    json_path: Path | None = None,
    out_dir: Path = Path(OUT_DIR),
    broker_url: str | None = None,
    source: str = CLIP,
    fps: float = FPS,
    annotate: bool = True,
    tuning: Tuning | None = None,
) -> dict:
    """Run the three-app demo for ``seconds``; returns (and writes to ``json_path``) the summary
    ``{"source_frames", "apps": {name: {"frames", "dropped", "latency_ms", "events"}}}``."""
    from edgeva.agent.bridge import AgentBridge
    from edgeva.agent.paths import ANY_HOST, PathPolicy
    from edgeva.control.broker import EmbeddedBroker, free_port
    from edgeva.control.client import EdgevaClient

    out_dir.mkdir(parents=True, exist_ok=True)
    video = (out_dir / "demo_annotated.mp4").resolve() if annotate else None
    broker = None
    if broker_url is None:
        broker = EmbeddedBroker(free_port())
        broker.start()
        broker_url = broker.url
        print(f"embedded MQTT broker on {broker_url}")
    state = Path(tempfile.mkdtemp(prefix="edgeva-demo-"))
    bridge = AgentBridge(
        {"device": DEVICE, "state_dir": state, "prefix": f"demo{os.getpid()}", "metrics_interval": METRICS_S,
         # the video goes straight into --out; a --source file is read where it lies
         "paths": PathPolicy.make(media_dirs=[Path.cwd(), *([Path(source).expanduser().resolve().parent]
                                                           if Path(source).expanduser().is_file() else [])],
                                  output_dirs={"default": out_dir},
                                  url_hosts=[ANY_HOST])},  # one user, its own --source
        broker_url, metrics_period=METRICS_S,
    )
    bridge.start()
    core = bridge.core
    client = EdgevaClient(broker_url, DEVICE)
    deployments = demo_apps(source, fps, video, tuning)
    try:
        for dep in deployments:
            t0 = time.monotonic()
            reply = client.request("deploy", dep, timeout=120)
            if not reply.get("ok"):
                err = reply.get("error", {})
                raise RuntimeError(f"deploying {dep['app']} failed: {err.get('code')} at {err.get('path')}: {err.get('message')}")
            started = reply["result"].get("started", [])
            shared = [m for m, v in reply["result"]["modules"].items() if v["shared_with"]]
            print(f"deployed {dep['app']:<9} in {(time.monotonic() - t0) * 1e3:6.0f} ms: "
                  f"{len(started)} module(s) started, shared: {', '.join(shared) or '-'}")
        live = _Live([d["app"] for d in deployments], seconds)
        t_start = time.monotonic()
        while (elapsed := time.monotonic() - t_start) < seconds:
            live.show(core, elapsed)
            time.sleep(min(1.0, max(0.0, seconds - elapsed)))
        live.show(core, seconds)
        core.tenant_metrics("default")  # drop counters come from the rings: read them while they exist
        if not core.finish(timeout=15):  # frames in flight reach their apps; final metrics
            log.warning("some modules did not finish draining within 15 s")
        summary = summarize(core, [d["app"] for d in deployments], seconds, fps)
        for dep in reversed(deployments):  # remove: closes the annotated video cleanly
            client.request("remove", {"app": dep["app"]}, timeout=60)
    finally:
        client.close()
        bridge.stop()
        if broker is not None:
            broker.stop()
    plot = plot_latency(summary.pop("_history"), out_dir / "demo_latency.png")
    summary["outputs"] = {"latency_plot": str(plot)}
    if video is not None and video.exists():
        summary["outputs"]["annotated_video"] = str(video)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
