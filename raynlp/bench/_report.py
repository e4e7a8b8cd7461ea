"""What every benchmark report holds: the machine it ran on, and its one figure (each way's speed as a bar,
labelled with its ratio to the baseline)."""

import os
import platform
from pathlib import Path


def machine() -> dict:
    """The facts that make figures from different machines comparable (or not)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def ratio_bars(path: Path, *, speeds: dict[str, float], ratios: dict[str, float], xlabel: str, title: str) -> None:
    """Horizontal bars in the order given; the first way is the baseline (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways = list(speeds)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(ways) + 1.2))
    bars = ax.barh([w.replace("_", " ") for w in ways], [speeds[w] for w in ways],
                   color=["#888"] + ["#1f77b4"] * (len(ways) - 1))
    for bar, way in zip(bars, ways):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {ratios[way]}×", va="center")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
