"""``edgeva bench``: data-plane micro-benchmarks. ``edgeva bench hop``: one process hop.

Imports of the benchmark (numpy, matplotlib, pynng) happen when it runs, not when the CLI
builds its parser.
"""

from __future__ import annotations

import argparse
import sys


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _outputs(p: argparse.ArgumentParser, json_help: str = "write the results as JSON") -> None:
    """The --json / --plot pair every benchmark takes."""
    p.add_argument("--json", metavar="FILE", help=json_help)
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG chart")


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
    f = sub.add_parser(
        "fleet", help="control plane at fleet scale: N agents against one mosquitto",
        description="Starts fleets of real agents (no modules until a deploy) against a private "
        "mosquitto and times a status of every agent, a new client's view of the fleet, a deploy "
        "to half of them (synthetic source -> publish) and the broker's idle message rate.",
    )
    f.add_argument("--agents", type=int, default=100, help="largest fleet (default: %(default)s)")
    f.add_argument("--sizes", type=lambda s: [int(x) for x in _csv(s)], metavar="N,N",
                   help="fleet sizes to run (default: N/4, N/2, N)")
    f.add_argument("--workers", type=int, help="processes hosting the agents (default: 4)")
    f.add_argument("--idle", type=float, default=5.0, metavar="S",
                   help="seconds the idle broker rate is measured over (default: %(default)s)")
    f.add_argument("--metrics-interval", type=float, default=2.0, metavar="S",
                   help="each agent's metrics period, as deployed (default: %(default)s)")
    _outputs(f)
    f.set_defaults(func=run_fleet_cmd)
    k = sub.add_parser(
        "soak", help="the three demo apps for N minutes with modules killed and the broker restarted",
        description="Runs the demo's apps (looped clip) on a real agent and a private mosquitto, kills "
        "a module and restarts the broker at intervals, and samples private memory and fds of every process, "
        "/dev/shm use, latency and drops; judges whether memory stays flat and restarts add up.",
    )
    k.add_argument("--minutes", type=float, default=10.0, help="how long (default: %(default)s)")
    k.add_argument("--kill-every", type=float, default=120.0, metavar="S",
                   help="SIGKILL one module (in turn) this often (default: %(default)s)")
    k.add_argument("--broker-every", type=float, default=180.0, metavar="S",
                   help="take the broker away this often (default: %(default)s)")
    k.add_argument("--broker-down", type=float, default=5.0, metavar="S",
                   help="for this long (default: %(default)s)")
    k.add_argument("--sample-every", type=float, default=5.0, metavar="S", help="(default: %(default)s)")
    _outputs(k, "write samples, faults and the verdict as JSON")
    k.set_defaults(func=run_soak_cmd)
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
    c.add_argument("--faults", type=_csv, metavar="KIND,KIND",
                   help="only these kinds: module_kill, module_stop, agent_kill, broker_down, link_cut, camera_down")
    c.add_argument("--busy", type=int, default=2, metavar="N",
                   help="busy processes (python3 -c 'while True: pass') beside it (default: %(default)s)")
    c.add_argument("--busy-nice", type=int, default=0, metavar="N",
                   help="their niceness (default: %(default)s, not niced)")
    _outputs(c, "write the faults, recoveries and checks as JSON")
    c.set_defaults(func=run_chaos_cmd)
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
    pp.set_defaults(func=run_paper_cmd)


def run_detector_cmd(args: argparse.Namespace) -> int:
    from edgeva.agent.bench.detectors import run_detector_bench

    cases = run_detector_bench(quick=args.quick, json_path=args.json, plot_path=args.plot,
                               onnx_models=args.onnx_model)
    return 0 if cases else 1


def run_fleet_cmd(args: argparse.Namespace) -> int:
    """0 when both targets hold at the largest size, 1 otherwise (2: bad arguments)."""
    from edgeva.control.bench_fleet import run_fleet_bench

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


def run_paper_cmd(args: argparse.Namespace) -> int:
    """0 when every claim of the issue holds on this run, 1 otherwise."""
    from edgeva.control.bench_paper.run import run_paper

    out = run_paper(args.quick, args.video, args.json, args.out, args.scalability)
    print()
    for k, v in out["checks"].items():
        print(f"  {k:<36} {v}")
    print(f"wrote {out['report']}" + (f" and {args.json}" if args.json else ""))
    return 0 if all(v is not False for v in out["checks"].values()) else 1


def run_chaos_cmd(args: argparse.Namespace) -> int:
    """0 when every check holds, 1 when one fails, 2 on bad arguments."""
    from edgeva.control.bench_chaos import run_chaos
    from edgeva.control.bench_chaos_plan import KINDS

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


def run_soak_cmd(args: argparse.Namespace) -> int:
    """0 when memory, shm, latency and restarts all hold, 1 otherwise."""
    from edgeva.control.bench_soak import run_soak

    out = run_soak(args.minutes, args.kill_every, args.broker_every, args.broker_down, args.sample_every,
                   args.json, args.plot)
    s = out["summary"]
    print()
    print(f"  window: {s['window']}")
    print(f"  private memory (RssAnon) growth per process (%): {s['rss_growth_pct']}  flat: {s['rss_flat']}"
          + (f" (not judged, killed in the last minute: {', '.join(s['rss_not_judged'])})" if s["rss_not_judged"] else ""))
    print(f"  /dev/shm reserved growth: {s['shm_growth_pct']} % over segments {s['segments']}, flat: "
          f"{s['shm_flat']} (touched pages: {s['shm_touched_growth_pct']} %, rings filling up to their size)")
    for app, v in sorted(s["latency"].items()):
        print(f"  {app:<9} latency p95 median {v['p95_median_ms']} ms, slope {v['p95_slope_ms_per_min']} ms/min")
    print(f"  kills {s['kills']}, restarts {s['restarts']}, accounted: {s['restarts_accounted']}; "
          f"broker outages {s['broker_outages']}, agent back online after each: {s['back_online_after_outages']}")
    for path in (args.json, args.plot):
        if path:
            print(f"wrote {path}")
    keys = ("rss_flat", "shm_flat", "latency_not_growing", "restarts_accounted", "back_online_after_outages")
    return 0 if all(s[k] for k in keys) else 1


def run_deploy_cmd(args: argparse.Namespace) -> int:
    from edgeva.control.bench_deploy import run_deploy_bench

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
    from edgeva.agent.bench.hop import CaseResult, pin_cpus, run_hop
    from edgeva.agent.bench.report import add_ratios, format_table, write_json, write_plot
    from edgeva.agent.bench.transports import transports

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
