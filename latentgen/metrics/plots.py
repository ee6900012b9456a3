"""FID-LeNet against the number of sampling steps, with the reconstruction ceiling and real-data floor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402


def plot_fid_vs_steps(curves: Mapping[str, Sequence[tuple[int, float]]], ceiling: float, floor: float,
                      path: str | Path, title: str = "FID-LeNet vs sampling steps") -> Path:
    """One line per model (``label -> [(steps, fid), ...]``), horizontal lines for ceiling and floor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9.0, 4.2), dpi=120)
    try:
        for label, points in curves.items():
            points = sorted(points)
            ax.plot([s for s, _ in points], [f for _, f in points], marker="o", label=label)
        ax.axhline(ceiling, color="tab:gray", linestyle="--", label=f"stage-1 reconstructions ({ceiling:.3g})")
        ax.axhline(floor, color="black", linestyle=":", label=f"real data, train vs test ({floor:.3g})")
        if curves:
            ax.set_xscale("log", base=2)
            steps = sorted({s for points in curves.values() for s, _ in points})
            ax.set_xticks(steps, [str(s) for s in steps])
        else:
            ax.text(0.5, 0.5, "no step-sweepable priors in this group", transform=ax.transAxes, ha="center")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel("FID-LeNet (lower is better)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        # outside the axes: it never hides a curve
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
