"""Presenting ``edgeva bench hop`` results: ratios to the ring, a text table, JSON, a PNG."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from edgeva.bench.hop.run import CaseResult

BASELINE = "ring"


def add_ratios(results: Sequence[CaseResult], baseline: str = BASELINE) -> None:
    """Set ``p50_vs_ring``: p50 over the baseline's p50 for the same payload (None without one)."""
    base = {r.payload: r.p50_us for r in results if r.transport == baseline and r.ok}
    for r in results:
        b = base.get(r.payload)
        r.p50_vs_ring = round(r.p50_us / b, 2) if r.ok and b else None


def _num(v: float | None, ratio: bool = False) -> str:
    if v is None:
        return "-"
    if ratio:
        return f"{v:.1f}x" if v < 100 else f"{v:.0f}x"
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def format_table(results: Sequence[CaseResult]) -> str:
    """Fixed-width table, one row per case; failed cases show their reason."""
    head = ("transport", "payload", "p50 us", "p99 us", "fps", "cpu us/msg", f"x {BASELINE}")
    rows = []
    for r in results:
        if r.ok:
            rows.append((r.transport, r.payload, _num(r.p50_us), _num(r.p99_us), _num(r.fps),
                         _num(r.cpu_us), _num(r.p50_vs_ring, ratio=True)))
        else:
            rows.append((r.transport, r.payload, "FAILED", "", "", "", ""))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    left = 2  # text columns left-aligned, numbers right-aligned

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    failed = [r for r in results if not r.ok]
    out += [f"FAILED {r.transport}/{r.payload}: {r.error}" for r in failed]
    return "\n".join(out)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def host_info() -> dict[str, Any]:
    """What a reader needs to judge the numbers: cores, load, versions."""
    import numpy as np

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "msgpack": _version("msgpack"),
        "pynng": _version("pynng"),
    }


def to_json(results: Sequence[CaseResult], quick: bool) -> dict[str, Any]:
    return {"results": [r.to_json() for r in results], "host": host_info(), "quick": quick}


def write_json(path: str, results: Sequence[CaseResult], quick: bool) -> None:
    with open(path, "w") as f:
        json.dump(to_json(results, quick), f, indent=2)
        f.write("\n")


def write_plot(path: str, results: Sequence[CaseResult]) -> None:
    """PNG: per payload, p50/p99 latency bars and a throughput bar per transport, log scale."""
    import matplotlib

    matplotlib.use("Agg")  # no display; lazily, so the CLI does not pay for matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    payloads = list(dict.fromkeys(r.payload for r in results))
    fig, axes = plt.subplots(2, len(payloads), figsize=(6.5 * len(payloads), 8), squeeze=False)
    for col, kind in enumerate(payloads):
        rows = [r for r in results if r.payload == kind]
        names = [r.transport for r in rows]
        x = range(len(rows))
        lat, thr = axes[0][col], axes[1][col]
        p50 = [r.p50_us if r.ok else 0 for r in rows]
        p99 = [r.p99_us if r.ok else 0 for r in rows]
        fps = [r.fps if r.ok else 0 for r in rows]
        b1 = lat.bar([i - 0.2 for i in x], p50, 0.4, label="p50", color="#3b75af")
        b2 = lat.bar([i + 0.2 for i in x], p99, 0.4, label="p99", color="#ef8636")
        b3 = thr.bar(list(x), fps, 0.6, color="#519e3e")
        for ax, bars, values in ((lat, (b1, b2), p50 + p99), (thr, (b3,), fps)):
            ax.set_yscale("log")
            # Bars start at the decade below the smallest value, so that heights compare.
            shown = [v for v in values if v > 0] or [1.0]
            bottom = 10 ** math.floor(math.log10(min(shown)))
            ax.set_ylim(bottom, max(shown) * 3)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(list(x), names, rotation=20)
            ax.grid(axis="y", which="both", alpha=0.3)
            for bs in bars:
                ax.bar_label(bs, labels=[_num(b.get_height()) if b.get_height() else ""
                                         for b in bs], fontsize=7, padding=1)
            for i, r in enumerate(rows):
                if not r.ok:
                    ax.text(i, bottom * 1.2, "failed", ha="center", va="bottom",
                            color="red", fontsize=9)
        lat.set_title(f"{kind}: one-way latency (lower is better)")
        lat.set_ylabel("microseconds (log)")
        lat.legend(loc="upper left")
        thr.set_title(f"{kind}: throughput (higher is better)")
        thr.set_ylabel("messages/s (log)")
    fig.suptitle("edgeva bench hop: one payload, one process to another")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
