"""``edgeva demo``: the three-application demo on a bundled clip (no GPU, no network)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from control.demo.run import run_demo

    summary = run_demo(
        seconds=args.seconds, json_path=Path(args.json) if args.json else None, out_dir=Path(args.out),
        broker_url=args.broker, source=args.source, fps=args.fps, annotate=not args.no_video,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "modules"}, indent=2))
    ok = all(a["frames"] > 0 for a in summary["apps"].values())
    return 0 if ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from control.demo.apps import CLIP

    p = subparsers.add_parser("demo", help="run three apps sharing one decoder and detector on a bundled clip")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to run (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="write the summary here")
    p.add_argument("--out", default="out", help="folder for the annotated video and plot (default: %(default)s)")
    p.add_argument("--broker", help="use this MQTT broker instead of starting an embedded one")
    p.add_argument("--source", default=CLIP, help="video source for the decoder (default: %(default)s)")
    p.add_argument("--fps", type=float, default=10.0, help="source frame rate (default: %(default)s)")
    p.add_argument("--no-video", action="store_true", help="do not write the annotated video")
    p.set_defaults(func=_run)
