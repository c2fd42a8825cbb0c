"""``edgeva bench fleet``: the control plane at fleet scale.

Its flags and its verdict (the exit status); the measurement is in ``run.py`` beside this file,
imported when the benchmark runs."""

from __future__ import annotations

import argparse
import sys

from edgeva.agent.settings import default
from edgeva.bench.cli_common import csv_list, outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fleet`` to ``edgeva bench``'s sub-commands."""
    f = sub.add_parser(
        "fleet", help="control plane at fleet scale: N agents against one mosquitto",
        description="Starts fleets of real agents (no modules until a deploy) against a private "
        "mosquitto and times a status of every agent, a new client's view of the fleet, a deploy "
        "to half of them (synthetic source -> publish) and the broker's idle message rate.",
    )
    f.add_argument("--agents", type=int, default=100, help="largest fleet (default: %(default)s)")
    f.add_argument("--sizes", type=lambda s: [int(x) for x in csv_list(s)], metavar="N,N",
                   help="fleet sizes to run (default: N/4, N/2, N)")
    f.add_argument("--workers", type=int, help="processes hosting the agents (default: 4)")
    f.add_argument("--idle", type=float, default=5.0, metavar="S",
                   help="seconds the idle broker rate is measured over (default: %(default)s)")
    f.add_argument("--metrics-interval", type=float, default=default("metrics_interval"), metavar="S",
                   help="each agent's metrics period, as deployed (default: %(default)s)")
    outputs(f)
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when both targets hold at the largest size, 1 otherwise (2: bad arguments)."""
    from edgeva.bench.fleet.run import run_fleet_bench

    if args.agents < 2 or any(n < 2 for n in args.sizes or []):
        print("edgeva bench fleet: fleets have at least 2 agents", file=sys.stderr)
        return 2
    out = run_fleet_bench(args.agents, args.sizes, args.workers, args.idle, args.metrics_interval,
                          args.json, args.plot)
    print()
    for key, t in out["targets"].items():
        print(f"  {key:<10} {t['value']:8.0f} ms  (target < {t['target']:.0f} ms)  {'met' if t['met'] else 'NOT MET'}")
    for key, v in out["growth"].items():
        print(f"  growth: {key:<40} {v}")
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0 if all(t["met"] for t in out["targets"].values()) else 1
