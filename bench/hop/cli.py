"""``edgeva bench hop``: one process hop: latency, throughput and CPU per transport.

Its flags and its verdict (the exit status); the measurement is in ``run.py`` beside this file,
imported when the benchmark runs."""

from __future__ import annotations

import argparse
import sys

from edgeva.bench.cli_common import csv_list
from edgeva.bench.hop import PAYLOADS, ROUNDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``hop`` to ``edgeva bench``'s sub-commands."""
    h = sub.add_parser(
        "hop",
        help="latency, throughput and CPU of moving a frame / metadata between two processes",
        description="Moves a 720p frame and a detection dict between two spawned processes over "
        "each transport; prints p50/p99 one-way latency, throughput and CPU per message.",
    )
    h.add_argument("--quick", action="store_true", help="fewer samples (~15 s in all)")
    h.add_argument("--json", metavar="FILE", help="write the results as JSON")
    h.add_argument("--plot", metavar="FILE.png", help="write a PNG chart (matplotlib)")
    h.add_argument("--transports", type=csv_list, metavar="A,B", help="subset, e.g. ring,shm-pipe")
    h.add_argument("--payloads", type=csv_list, default=list(PAYLOADS), metavar="A,B",
                   help=f"{', '.join(PAYLOADS)} (default: all)")
    h.add_argument("--rounds", type=int, default=ROUNDS,
                   help="runs per case, transports taking turns; the median is reported (default: %(default)s)")
    h.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the scheduler place producer and consumer (default: each pinned to "
                   "its own CPU, so that runs compare like with like)")
    h.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the cases, print progress and the table; 1 if any case failed, 2 on bad arguments."""
    from edgeva.bench.hop.report import add_ratios, format_table, write_json, write_plot
    from edgeva.bench.hop.run import CaseResult, pin_cpus, run_hop
    from edgeva.bench.hop.transports import transports

    known = transports()
    bad = [t for t in args.transports or [] if t not in known]
    bad += [p for p in args.payloads if p not in PAYLOADS]
    if bad:
        print(f"edgeva bench hop: unknown {', '.join(bad)}; transports: {', '.join(known)}; "
              f"payloads: {', '.join(PAYLOADS)}", file=sys.stderr)
        return 2

    def progress(r: CaseResult) -> None:
        if r.ok:
            line = (f"p50 {r.p50_us:9.1f} us  p99 {r.p99_us:9.1f} us  {r.fps:9.1f} fps  "
                    f"cpu {r.cpu_us:8.1f} us/msg")
        else:
            line = f"FAILED: {r.error}"
        print(f"  {r.transport:<13} {r.payload:<5} {line}  ({r.seconds:.1f} s)", flush=True)

    cpus = pin_cpus() if args.pin else None
    where = f"producer on CPU {cpus[0]}, consumer on CPU {cpus[1]}" if cpus else "unpinned"
    print(f"edgeva bench hop{' --quick' if args.quick else ''}: "
          f"{', '.join(args.transports or known)} x {', '.join(args.payloads)} ({where})", flush=True)
    results = run_hop(args.transports, args.payloads, quick=args.quick, progress=progress,
                      rounds=args.rounds, pin=args.pin)
    add_ratios(results)
    print()
    print(format_table(results))
    if args.json:
        write_json(args.json, results, args.quick)
        print(f"wrote {args.json}")
    if args.plot:
        write_plot(args.plot, results)
        print(f"wrote {args.plot}")
    return 0 if all(r.ok for r in results) else 1
