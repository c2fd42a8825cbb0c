"""``edgeva bench deploy``: how fast an app goes live, and how fast a second one attaches.

An embedded broker and an agent in this process; a client deploys a synthetic-source app
(decoder -> publish) and times the reply and the first event, then deploys a second app that
shares the decoder and times the same, checking that the first app lost no frame meanwhile.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path


def _app(name: str, fields: list[str] | None) -> dict:
    return {"app": name, "modules": {
        "dec": {"type": "decoder", "args": {"source": "synthetic", "fps": 50, "width": 320, "height": 240},
                "outputs": ["pub"]},
        "pub": {"type": "publish", "args": {"fields": fields}},
    }}


def _first_event(sub, timeout: float = 30.0) -> dict:
    return sub.get(timeout=timeout).json()


def run_deploy_bench(runs: int, json_path: str | None = None, progress=print) -> dict:
    from edgeva.agent.bridge import AgentBridge
    from edgeva.control.broker import EmbeddedBroker, free_port
    from edgeva.control.client import EdgevaClient

    broker = EmbeddedBroker(free_port())
    broker.start()
    bridge = AgentBridge({"device": "bench", "state_dir": Path(tempfile.mkdtemp()), "prefix": f"bd{os.getpid()}"},
                         broker.url, metrics_period=5.0)
    bridge.start()
    client = EdgevaClient(broker.url, "bench")
    rows = []
    try:
        for i in range(runs):
            a1, a2 = f"first{uuid.uuid4().hex[:4]}", f"second{uuid.uuid4().hex[:4]}"
            s1, s2 = client.subscribe_events(a1), client.subscribe_events(a2)
            t0 = time.monotonic()
            r = client.request("deploy", _app(a1, None), timeout=60)
            t_reply = time.monotonic() - t0
            _first_event(s1)
            t_event = time.monotonic() - t0
            time.sleep(0.3)
            t1 = time.monotonic()
            r2 = client.request("deploy", _app(a2, []), timeout=60)
            t_reply2 = time.monotonic() - t1
            _first_event(s2)
            t_event2 = time.monotonic() - t1
            time.sleep(0.3)
            ids = []
            while True:
                try:
                    ids.append(s1.get(timeout=0).json()["frame_id"])
                except Exception:
                    break
            lost = (ids[-1] - ids[0] + 1 - len(ids)) if ids else -1
            shared = r2["result"]["modules"]["dec"]["pid"] == r["result"]["modules"]["dec"]["pid"]
            rows.append({"deploy_reply_ms": t_reply * 1e3, "deploy_first_event_ms": t_event * 1e3,
                         "attach_reply_ms": t_reply2 * 1e3, "attach_first_event_ms": t_event2 * 1e3,
                         "first_app_frames_lost": lost, "decoder_shared": shared})
            progress(f"  run {i + 1}/{runs}: deploy -> first event {t_event * 1e3:6.0f} ms, "
                     f"second app attach -> first event {t_event2 * 1e3:6.0f} ms, first app lost {lost} frames")
            for a in (a2, a1):
                client.request("remove", {"app": a}, timeout=30)
            s1.close()
            s2.close()
    finally:
        client.close()
        bridge.stop()
        broker.stop()
    keys = [k for k in rows[0] if k.endswith("_ms")]
    summary = {k: {"median": round(statistics.median(r[k] for r in rows), 1),
                   "min": round(min(r[k] for r in rows), 1), "max": round(max(r[k] for r in rows), 1)}
               for k in keys}
    out = {"runs": rows, "summary": summary,
           "first_app_frames_lost": sum(r["first_app_frames_lost"] for r in rows),
           "decoder_always_shared": all(r["decoder_shared"] for r in rows)}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n")
    return out
