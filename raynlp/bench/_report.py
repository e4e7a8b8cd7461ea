"""What every benchmark report holds and where it goes: the machine it ran on, `NAME.json` and `NAME.png` in the
output folder, and its one figure (each way's speed as a bar, labelled with its ratio to the baseline)."""

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path


def machine() -> dict:
    """The facts that make figures from different machines comparable (or not)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_report(output_dir: Path, name: str, report: dict, plot: Callable[[dict, Path], None]) -> Path:
    """Write `NAME.json` and the figure `plot` draws as `NAME.png` into `output_dir`; return the JSON's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    plot(report, output_dir / f"{name}.png")
    return path


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
