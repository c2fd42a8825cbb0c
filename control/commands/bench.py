"""``edgeva bench``: data-plane micro-benchmarks. ``edgeva bench hop``: one process hop.

Imports of the benchmark (numpy, matplotlib, pynng) happen when it runs, not when the CLI
builds its parser.
"""

from __future__ import annotations

import argparse
import sys


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="data-plane micro-benchmarks")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    h = sub.add_parser(
        "hop",
        help="latency, throughput and CPU of moving a frame / metadata between two processes",
        description="Moves a 720p frame and a detection dict between two spawned processes over "
        "each transport; prints p50/p99 one-way latency, throughput and CPU per message.",
    )
    h.add_argument("--quick", action="store_true", help="fewer samples (~15 s in all)")
    h.add_argument("--json", metavar="FILE", help="write the results as JSON")
    h.add_argument("--plot", metavar="FILE.png", help="write a PNG chart (matplotlib)")
    h.add_argument("--transports", type=_csv, metavar="A,B", help="subset, e.g. ring,shm-pipe")
    h.add_argument("--payloads", type=_csv, default=["frame", "meta"], metavar="A,B",
                   help="frame, meta (default both)")
    h.add_argument("--rounds", type=int, default=3,
                   help="runs per case, transports taking turns; the median is reported (default: 3)")
    h.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the scheduler place producer and consumer (default: each pinned to "
                   "its own CPU, so that runs compare like with like)")
    h.set_defaults(func=run_hop_cmd)
    d = sub.add_parser("deploy", help="deploy-to-first-event and second-app attach times over MQTT")
    d.add_argument("--runs", type=int, default=5, help="repetitions (default: %(default)s)")
    d.add_argument("--json", metavar="FILE", help="write the results as JSON")
    d.set_defaults(func=run_deploy_cmd)
    t = sub.add_parser("detector", help="frames/s and ms per frame of each detector backend, 1 and 2 threads")
    t.add_argument("--quick", action="store_true", help="fewer frames (~30 s)")
    t.add_argument("--json", metavar="FILE", help="write the results as JSON")
    t.add_argument("--plot", metavar="FILE.png", help="write a PNG chart")
    t.add_argument("--onnx-model", action="append", default=[], metavar="PATH",
                   help="also time this ONNX detector model (repeatable), e.g. an int8 build")
    t.set_defaults(func=run_detector_cmd)


def run_detector_cmd(args: argparse.Namespace) -> int:
    from agent.bench.detectors import run_detector_bench

    cases = run_detector_bench(quick=args.quick, json_path=args.json, plot_path=args.plot,
                               onnx_models=args.onnx_model)
    return 0 if cases else 1


def run_deploy_cmd(args: argparse.Namespace) -> int:
    from control.bench_deploy import run_deploy_bench

    print(f"edgeva bench deploy: {args.runs} runs (embedded broker, agent in this process)", flush=True)
    out = run_deploy_bench(args.runs, args.json)
    print()
    for k, v in out["summary"].items():
        print(f"  {k:<24} median {v['median']:7.1f} ms   min {v['min']:7.1f}   max {v['max']:7.1f}")
    print(f"  first app frames lost while the second attached: {out['first_app_frames_lost']}")
    print(f"  decoder shared every time: {out['decoder_always_shared']}")
    return 0 if out["first_app_frames_lost"] == 0 and out["decoder_always_shared"] else 1


def run_hop_cmd(args: argparse.Namespace) -> int:
    """Run the cases, print progress and the table; 1 if any case failed, 2 on bad arguments."""
    from agent.bench.hop import CaseResult, pin_cpus, run_hop
    from agent.bench.report import add_ratios, format_table, write_json, write_plot
    from agent.bench.transports import transports

    known = transports()
    bad = [t for t in args.transports or [] if t not in known]
    bad += [p for p in args.payloads if p not in ("frame", "meta")]
    if bad:
        print(f"edgeva bench hop: unknown {', '.join(bad)}; transports: {', '.join(known)}; "
              f"payloads: frame, meta", file=sys.stderr)
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
