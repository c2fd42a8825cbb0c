"""``edgeva demo``: the three-application demo on a bundled clip (no GPU, no network)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from edgeva.control.demo.apps import Tuning
    from edgeva.control.demo.run import run_demo

    tuning = Tuning(interval=args.interval, threads=args.threads,
                    embed_every=args.embed_every)
    summary = run_demo(
        seconds=args.seconds, json_path=Path(args.json) if args.json else None, out_dir=Path(args.out),
        broker_url=args.broker, source=args.source, fps=args.fps, annotate=not args.no_video,
        tuning=tuning,
    )
    print(json.dumps({k: v for k, v in summary.items() if k not in ("modules", "verdict")}, indent=2))
    for name, m in summary["modules"].items():
        extra = "".join(f", {k} {v:g}" for k, v in m.get("counters", {}).items())
        print(f"  {name:<40} {m['type']:<9} {m['proc_ms_p50'] or 0:7.1f} ms/frame (p50){extra}")
    print(summary["verdict"])
    ok = all(a["frames"] > 0 for a in summary["apps"].values())
    return 0 if ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from edgeva.control.demo.apps import CLIP, FPS, OUT_DIR, SECONDS, Tuning

    p = subparsers.add_parser("demo", help="run three apps sharing one decoder and detector on a bundled clip")
    p.add_argument("--seconds", type=float, default=SECONDS, help="how long to run (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="write the summary here")
    p.add_argument("--out", default=OUT_DIR, help="folder for the annotated video and plot (default: %(default)s)")
    p.add_argument("--broker", help="use this MQTT broker instead of starting an embedded one")
    p.add_argument("--source", default=CLIP, help="video source for the decoder (default: %(default)s)")
    p.add_argument("--fps", type=float, default=FPS, help="source frame rate (default: %(default)s)")
    p.add_argument("--no-video", action="store_true", help="do not write the annotated video")
    d = Tuning()
    p.add_argument("--interval", type=int, default=d.interval,
                   help="detector: inference on every k-th frame (default: %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="detector threads (default: %(default)s)")
    p.add_argument("--embed-every", type=int, default=d.embed_every,
                   help="reid: re-embed a track every N frames (default: %(default)s)")
    p.set_defaults(func=_run)
