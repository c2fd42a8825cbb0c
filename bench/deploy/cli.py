"""``edgeva bench deploy``: deploy-to-first-event and second-app attach times over MQTT.

Its flags and its verdict (the exit status); the measurement is in ``run.py`` beside this file,
imported when the benchmark runs."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``deploy`` to ``edgeva bench``'s sub-commands."""
    d = sub.add_parser("deploy", help="deploy-to-first-event and second-app attach times over MQTT")
    d.add_argument("--runs", type=int, default=5, help="repetitions (default: %(default)s)")
    d.add_argument("--json", metavar="FILE", help="write the results as JSON")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeva.bench.deploy.run import run_deploy_bench

    print(f"edgeva bench deploy: {args.runs} runs (embedded broker, agent in this process)", flush=True)
    out = run_deploy_bench(args.runs, args.json)
    print()
    for k, v in out["summary"].items():
        print(f"  {k:<24} median {v['median']:7.1f} ms   min {v['min']:7.1f}   max {v['max']:7.1f}")
    print(f"  first app frames lost while the second attached: {out['first_app_frames_lost']}")
    print(f"  decoder shared every time: {out['decoder_always_shared']}")
    return 0 if out["first_app_frames_lost"] == 0 and out["decoder_always_shared"] else 1
