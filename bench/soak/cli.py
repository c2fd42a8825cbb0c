"""``edgeva bench soak``: the demo's apps for N minutes with modules killed and the broker restarted.

Its flags and its verdict (the exit status); the measurement is in ``run.py`` beside this file,
imported when the benchmark runs."""

from __future__ import annotations

import argparse

from edgeva.bench.cli_common import outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``soak`` to ``edgeva bench``'s sub-commands."""
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
    outputs(k, "write samples, faults and the verdict as JSON")
    k.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when memory, shm, latency and restarts all hold, 1 otherwise."""
    from edgeva.bench.soak.run import run_soak

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
