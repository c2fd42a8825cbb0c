"""``edgeva bench chaos``: four apps on two agents while everything they depend on fails.

Its flags and its verdict (the exit status); the measurement is in ``run.py`` beside this file,
imported when the benchmark runs."""

from __future__ import annotations

import argparse
import sys

from edgeva.bench.cli_common import csv_list, outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``chaos`` to ``edgeva bench``'s sub-commands."""
    c = sub.add_parser(
        "chaos", help="four apps on two agents while modules, agents, the broker, the link and the camera fail",
        description="Runs the demo's three apps and a split app over two agents (camera: the test RTSP server) "
        "beside busy processes, and every 5-20 s (seeded) injects one fault: a module SIGKILLed or SIGSTOPped past "
        "its hang timeout, an agent SIGKILLed and restarted, the broker down 5-30 s, the link cut 5-30 s, the "
        "camera down 5-30 s. Reports each app's recovery and frames lost per fault; checks recovery budgets, "
        "logs, frame order and that /dev/shm, processes and memory come back to their baseline.",
    )
    c.add_argument("--minutes", type=float, default=10.0, help="fault window, setup not counted (default: %(default)s)")
    c.add_argument("--seed", type=int, default=1, help="draws the faults, their times and targets (default: %(default)s)")
    c.add_argument("--faults", type=csv_list, metavar="KIND,KIND",
                   help="only these kinds: module_kill, module_stop, agent_kill, broker_down, link_cut, camera_down")
    c.add_argument("--busy", type=int, default=2, metavar="N",
                   help="busy processes (python3 -c 'while True: pass') beside it (default: %(default)s)")
    c.add_argument("--busy-nice", type=int, default=0, metavar="N",
                   help="their niceness (default: %(default)s, not niced)")
    outputs(c, "write the faults, recoveries and checks as JSON")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when every check holds, 1 when one fails, 2 on bad arguments."""
    from edgeva.bench.chaos.plan import KINDS
    from edgeva.bench.chaos.run import run_chaos

    bad = [k for k in args.faults or [] if k not in KINDS]
    if bad or args.minutes <= 0 or args.busy < 0 or not 0 <= args.busy_nice <= 19:
        print(f"edgeva bench chaos: bad arguments ({', '.join(bad) or 'minutes > 0, busy >= 0, nice 0-19'}); "
              f"fault kinds: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    out = run_chaos(args.minutes, args.seed, args.json, args.plot, args.faults, args.busy, args.busy_nice)
    print()
    apps = sorted(out["apps"])
    print(f"  {'t (s)':>7} {'fault':<12} {'target':<34} " + " ".join(f"{a:>16}" for a in apps))
    for f in out["faults"]:
        cells = []
        for a in apps:
            v = f["apps"].get(a, {})
            rec = "down" if v.get("recovered_s") is None else f"{v['recovered_s']:.1f}s"
            cells.append(f"{rec + ' / ' + str(v.get('frames_lost', '-')):>16}")
        print(f"  {f['t']:7.1f} {f['kind']:<12} {str(f['target'])[:34]:<34} " + " ".join(cells))
    print("  (per app: recovery after the fault / frames lost until the next fault)")
    for k, v in out["checks"].items():
        print(f"  {k:<28} {'ok' if v else 'FAILED'}")
    print(f"  logs in {out['logs']}")
    for path in (args.json, args.plot):
        if path:
            print(f"wrote {path}")
    return 0 if all(out["checks"].values()) else 1
