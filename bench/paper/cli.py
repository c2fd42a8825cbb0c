"""``edgeva bench paper``: the paper's evaluation (section 5).

Its flags and its verdict (the exit status); the measurement is in ``run.py`` beside this file,
imported when the benchmark runs."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``paper`` to ``edgeva bench``'s sub-commands."""
    pp = sub.add_parser(
        "paper", help="the paper's evaluation: monolith vs edgeva vs VideoPipe, overhead, Table 2",
        description="Runs the paper's section 5 on the bundled clip with the demo's modules and models: "
        "CASE A (monolith), B (edgeva, one agent), C (two agents on their own CPUs), VideoPipe (emulated), "
        "EdgeEye's placement, cameras sustained, per-hop overhead and Table 2; writes JSON, plots, a report.",
    )
    pp.add_argument("--quick", action="store_true", help="10 s per run, 8 s per camera-count probe (the whole about 5.5 min on 2 cores)")
    pp.add_argument("--video", help="another clip (file path or asset:NAME)")
    pp.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    pp.add_argument("--out", default="out/paper", help="folder for plots and the report (default: %(default)s)")
    pp.add_argument("--scalability", action="store_true", help="also run 2 to 5 agents (Figure 9)")
    pp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when every claim of the issue holds on this run, 1 otherwise."""
    from edgeva.bench.paper.run import run_paper

    out = run_paper(args.quick, args.video, args.json, args.out, args.scalability)
    print()
    for k, v in out["checks"].items():
        print(f"  {k:<36} {v}")
    print(f"wrote {out['report']}" + (f" and {args.json}" if args.json else ""))
    return 0 if all(v is not False for v in out["checks"].values()) else 1
