"""``bench chaos``'s timeline: each app's event rate over time, one row per app, with every
fault marked (a line where it was injected, a band while its cause lasted, its kind above)."""

from __future__ import annotations

from typing import Any

COLOURS = {"module_kill": "tab:red", "module_stop": "tab:orange", "agent_kill": "tab:purple",
           "broker_down": "tab:grey", "link_cut": "tab:blue", "camera_down": "tab:green"}


def write_plot(path: str, result: dict, events: dict[str, list], t0: float) -> None:
    """PNG at ``path`` (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rates: dict[str, list[int]] = result["rates"]
    apps = sorted(rates)
    fig, axes = plt.subplots(max(1, len(apps)), 1, figsize=(14, 2.2 * max(1, len(apps)) + 1), sharex=True,
                             squeeze=False)
    for ax, app in zip(axes[:, 0], apps, strict=False):
        ax.plot(range(len(rates[app])), rates[app], lw=0.9, color="black")
        ax.set_ylabel(f"{app}\nevents/s", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        for f in result["faults"]:
            _mark(ax, f, f.get("apps", {}).get(app, {}).get("recovered_s"))
    for f in result["faults"]:
        axes[0, 0].annotate(f["kind"], (f["t"], 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                            rotation=60, va="bottom", color=COLOURS.get(f["kind"], "black"))
    axes[-1, 0].set_xlabel("seconds since the first fault window opened")
    kinds = sorted({f["kind"] for f in result["faults"]})
    fig.legend(handles=[Patch(color=COLOURS.get(k, "black"), alpha=0.5, label=k) for k in kinds],
               loc="lower center", ncol=max(1, len(kinds)), fontsize=8)
    failed = [k for k, v in result["checks"].items() if not v]
    fig.suptitle(f"edgeva bench chaos, seed {result['seed']}: "
                 + ("every check held" if not failed else f"FAILED: {', '.join(failed)}"), y=0.995)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mark(ax: Any, f: dict, recovered_s: float | None) -> None:
    """The fault on one app's row: a line at its start, a band while its cause lasted, a
    triangle where this app was back (none if the app never went down)."""
    colour = COLOURS.get(f["kind"], "black")
    ax.axvline(f["t"], color=colour, lw=1.0)
    if f.get("duration_s"):
        ax.axvspan(f["t"], f["t"] + f["duration_s"], color=colour, alpha=0.15)
    if recovered_s:
        ax.plot([f["t"] + recovered_s], [0], marker="^", color=colour, ms=6, clip_on=False)
