"""Plots in the paper's style and a Markdown report that puts edgeva's figures beside the
paper's (its Table 2, Table 4 and Figures 4-9)."""

from __future__ import annotations

from pathlib import Path

from edgeva.bench.paper.stats import smooth

CASES = ("A", "B", "C", "videopipe")
COLORS = {"A": "tab:red", "B": "tab:green", "C": "tab:blue", "videopipe": "tab:orange"}
LABELS = {"A": "CASE A (monolith)", "B": "CASE B (edgeva, 1 agent)", "C": "CASE C (edgeva, 2 agents)",
          "videopipe": "VideoPipe (emulated)"}


def write_plots(r: dict, series: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    # 1. latency over time, slowest app, p95-filtered and smoothed (Figures 4-7)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for k, ax in zip((1, 2, 3), axes, strict=True):
        for case in CASES:
            apps = series.get(case, {}).get(f"apps_{k}", {})
            if not apps:
                continue
            worst = max(apps.values(), key=lambda s: max((v for _, v in s), default=0))
            pts = smooth(worst, 150)
            if pts:
                ax.plot([t for t, _ in pts], [v for _, v in pts], color=COLORS[case], label=LABELS[case])
        ax.set(title=f"{k} app(s): slowest app", xlabel="seconds", yscale="log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("end-to-end latency, ms (p95-filtered, moving average)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths["latency"] = str(out / "paper_latency.png")
    fig.savefig(paths["latency"], dpi=110)
    plt.close(fig)

    # 2. throughput per case and app count (Table 4), with the input rate
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.2
    for i, case in enumerate(CASES):
        vals = [r["cases"][case].get(f"apps_{k}", {}).get("fps", 0) for k in (1, 2, 3)]
        ax.bar([k + (i - 1.5) * w for k in (1, 2, 3)], vals, w, color=COLORS[case], label=LABELS[case])
    ax.axhline(r["settings"]["fps_single_device"], color="grey", ls="--", lw=1, label="input, single device")
    ax.axhline(r["settings"]["fps_distributed"], color="black", ls=":", lw=1, label="input, two devices")
    ax.set(xticks=[1, 2, 3], xlabel="applications", ylabel="frames/s reaching the slowest app's end",
           title="throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["throughput"] = str(out / "paper_throughput.png")
    fig.savefig(paths["throughput"], dpi=110)
    plt.close(fig)

    # 3. cumulative per-hop overhead, stacked (Figure 8)
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, (name, hops) in enumerate((("edgeva", r["overhead_ms"]["per_hop"]["edgeva_hops"]),
                                      ("VideoPipe", r["overhead_ms"]["per_hop"]["videopipe_hops"]))):
        base = 0.0
        for i, h in enumerate(hops):
            x = i * 2.5 + j
            if base:  # what the hops before cost, so that each bar stands at its cumulative height
                ax.bar(x, base, 0.9, color="whitesmoke", edgecolor="lightgrey")
            parts = [("serialise", h.get("serialise_ms", 0)), ("network", h.get("network_ms", 0)),
                     ("deserialise", h.get("deserialise_ms", 0)), ("runtime", h.get("runtime_ms", 0))]
            bottom = base
            for (label, v), col in zip(parts, ("tab:purple", "tab:blue", "tab:cyan", "tab:gray"), strict=True):
                ax.bar(x, v, 0.9, bottom=bottom, color=col, label=label if (i == 0 and j == 0) else None,
                       edgecolor="black" if j == 1 else None)
                bottom += v
            base += h["total_ms"]
            ax.text(x, base, name[0], ha="center", va="bottom", fontsize=7)
    hops = r["overhead_ms"]["per_hop"]["edgeva_hops"]
    ax.set_xticks([i * 2.5 + 0.5 for i in range(len(hops))], [h["hop"] for h in hops], fontsize=8)
    ax.set(ylabel="cumulative overhead, ms", title="per-hop overhead, 4 modules over 2 devices (e: edgeva, V: VideoPipe)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["overhead"] = str(out / "paper_overhead.png")
    fig.savefig(paths["overhead"], dpi=110)
    plt.close(fig)

    if r.get("scalability"):
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = sorted(r["scalability"], key=int)
        ax.plot([int(n) for n in ns], [r["scalability"][n]["slowest_app_latency_ms"]["p50"] for n in ns], "o-")
        ax.set(xlabel="agents (one camera each)", ylabel="slowest app latency p50, ms", title="scalability (Figure 9)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths["scalability"] = str(out / "paper_scalability.png")
        fig.savefig(paths["scalability"], dpi=110)
        plt.close(fig)
    return paths


def _fmt(x: object) -> str:
    return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))


def write_report(r: dict, path: Path) -> Path:
    c, s = r["cases"], r["settings"]
    lines = [
        "# edgeva against the paper's evaluation",
        "",
        f"`edgeva bench paper{' --quick' if s['quick'] else ''}`: {s['seconds_per_run']:g} s per run, source "
        f"`{s['source']}`, {s['fps_single_device']:g} fps on one device, {s['fps_distributed']:g} fps for the two-device "
        f"cases; machine: {r['machine']['cpus']} CPUs ({r['machine']['processor']}); a device of CASE C and "
        "VideoPipe is one CPU (taskset-style affinity). Whole run: "
        f"{r['elapsed_s']:.0f} s.",
        "",
        "Workload. One device (CASE A and B): the paper's, every pipeline detecting on every frame (detector "
        f"`interval` {s['tuning']['single_device']['interval']}, the module's default; reid re-embeds a track every "
        f"{s['tuning']['single_device']['embed_every']} frames). Two devices (CASE C, VideoPipe, EdgeEye, the overhead, "
        f"scalability) and the camera counts: the demo's tuning, the product as shipped (`interval` "
        f"{s['tuning']['two_devices']['interval']}): one CPU detecting every frame of a 15 fps input has no headroom "
        "(the detector alone takes ~60 ms of the 67 ms frame period), and the same args run in both systems. Camera "
        f"counts: {s['seconds_per_probe']:g} s per probe; one camera counts as sustained by CASE B without a probe "
        "when CASE B held the three apps above (the demo's tuning costs less per frame).",
        "",
        "## Throughput and latency (the paper's Figures 4-7 and Table 4)",
        "",
        "Each row is a case's slowest app (the paper plots only that one). `fps`: frames/s reaching the app's end; "
        "`dropped`: share of the input frames that never reached it (dropped, or never decoded because the source "
        "was slowed by back-pressure); `lagging`: latency grows over the run or fps < 90 % of the input.",
        "",
        "| case | apps | fps | latency p50 ms | p95 ms | dropped | lagging |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in ("A", "B", "C", "videopipe", "edgeeye"):
        for k in (1, 2, 3):
            row = c[case].get(f"apps_{k}")
            if row:
                lines.append(f"| {case} | {k} | {row['fps']:.2f} | {_fmt(row['latency_ms']['p50'])} | "
                             f"{_fmt(row['latency_ms']['p95'])} | {row['dropped_ratio']:.0%} | {row['lagging']} |")
    ch = r["checks"]
    lines += [
        "",
        "The paper (Jetson Nanos, 15 fps 720p): CASE A lags with 2 and 3 apps (tracking beyond 55 s of delay), CASE B "
        "does not; VideoPipe delivers 3.7 (2 apps) and 3.82 fps (3 apps) where CASE C holds the input; CASE C's latency "
        "is ~20 % (0.05 s) below VideoPipe's.",
        "",
        f"- Cameras sustained with the three apps, no lag: CASE A **{r['max_streams']['A']}**, CASE B "
        f"**{r['max_streams']['B']}** (ratio {ch['max_streams_B_over_A']}; probes {r['max_streams']['probes']}).",
        f"- CASE C with 3 apps: {c['C']['apps_3']['fps']:.2f} fps against a pipelining bound of "
        f"{_fmt(c['C']['apps_3'].get('bound_fps'))} fps (1 / the busier device's time per frame, measured in the same "
        f"run): {_fmt(ch['C_fps_over_bound'])} of it. VideoPipe: {c['videopipe']['apps_3']['fps']:.2f} fps, "
        f"CASE C / VideoPipe = {_fmt(ch['C_over_videopipe_fps'])}x (the paper: 15 / 3.82 = 3.9x).",
        "  Why ours differs from 3.9x: VideoPipe's throughput is 1 / its whole pipeline's time (one frame at a time); "
        "CASE C's is 1 / its slowest stage's. The ratio is the pipeline's time over its slowest stage's time, so it "
        "depends on how evenly the work splits over the two devices and on the input rate that caps CASE C, not on a "
        "constant of the design.",
        f"- Cumulative per-hop overhead along decoder -> detector | tracker -> roi: edgeva "
        f"{r['overhead_ms']['edgeva']:.3f} ms, VideoPipe {r['overhead_ms']['videopipe']:.3f} ms "
        f"(ratio {_fmt(ch['overhead_edgeva_over_videopipe'])}; the claim: <= 0.25).",
        "",
        "## Per-hop overhead (Figure 8)",
        "",
        "| system | hop | kind | arrays crossing | serialise ms | network ms | deserialise ms | total ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("edgeva", "edgeva_hops"), ("VideoPipe", "videopipe_hops")):
        for h in r["overhead_ms"]["per_hop"][key]:
            crossed = ("none" if not h["arrays"] else ", ".join(h["arrays"])) if "arrays" in h else ""
            lines.append(f"| {name} | {h['hop']} | {h['kind']} | {crossed} | {_fmt(h.get('serialise_ms'))} | "
                         f"{_fmt(h.get('network_ms'))} | {_fmt(h.get('deserialise_ms'))} | {_fmt(h['total_ms'])} |")
    lines += ["", "A ring hop has no serialisation: its total is the runtime's hand-off (commit to the consumer's "
              "start). The link hop is split with the link's own serialise and deserialise times (p50). Arrays "
              "crossing: what edgeva's link carried (fields always cross); an array no module beyond the link uses "
              "(the frame, when the far side reads only detections and tracks) is left out before it is sent.", "",
              "## Table 2: models alone, together, split", "", "| setting | model | inferences/s | latency p50 ms |",
              "|---|---|---|---|"]
    for setting, models in r["table2"].items():
        for m, v in models.items():
            lines.append(f"| {setting} | {m} | {_fmt(v.get('ips'))} | {_fmt((v.get('latency_ms') or {}).get('p50'))} |")
    lines += ["", "The paper: together on one Jetson, OSNet drops to 52 % and ResNet to 48 % of their alone "
              "figures; split over two devices each keeps its own.", ""]
    if r.get("scalability"):
        lines += ["## Scalability (Figure 9)", "", "| agents | slowest app p50 ms | fps | lagging |", "|---|---|---|---|"]
        for n, v in sorted(r["scalability"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {n} | {_fmt(v['slowest_app_latency_ms']['p50'])} | {v['fps']} | {v['lagging']} |")
        lines.append("")
    lines += ["## Checks", "", *[f"- `{k}`: {v}" for k, v in ch.items()], "",
              "## Keys of the JSON", "",
              "- `cases.{A,B,C,videopipe}.apps_{1,2,3}` (and `cases.edgeeye.apps_3`): `fps`, `latency_ms.{p50,p95,p99}`, "
              "`dropped_ratio`, `lagging`, and `apps` (every app's own row: `frames`, `offered`, `lag_ms_per_s`). "
              "`cases.C.apps_k.bound_fps`: the pipelining bound; `links`: per-link serialise/network/deserialise p50, "
              "and `arrays` (sending module type -> the arrays its stream carried across).",
              "- `max_streams.{A,B}`: cameras (three apps each, the demo's tuning) sustained without lag; "
              "`max_streams.probes`: each camera count tried and whether it held.",
              "- `overhead_ms.{edgeva,videopipe}`: cumulative per-hop overhead along the four-module pipeline; "
              "`overhead_ms.per_hop`: each hop split into serialise / network / deserialise; a link hop's `arrays`: "
              "the arrays that crossed it.",
              "- `table2`: inferences/s and latency of each model alone, both on one CPU, split over two.",
              "- `scalability`: with `--scalability`, per agent count the slowest app's latency.",
              "- `checks`: the issue's claims as booleans and ratios; `settings` (`tuning.single_device`, `tuning.two_devices`, `tuning.max_streams`: "
              "the module args each part ran with), `machine`, `elapsed_s`, `plots`.", "",
              *[f"![{k}]({Path(p).name})" for k, p in r.get("plots", {}).items()], ""]
    path.write_text("\n".join(lines))
    return path
