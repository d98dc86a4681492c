"""PNG plots for eval reports (matplotlib, Agg backend). Without matplotlib a plot is skipped
and the caller notes it: numbers never depend on plotting."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def line_plot(path: Path, xs: Sequence, ys: Sequence, errors: Sequence, xlabel: str, ylabel: str,
              title: str, x_scale: str = "linear") -> Optional[Path]:
    """One curve with 95% interval error bars; None (nothing written) without matplotlib or
    without a single finite point."""
    if not matplotlib_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(x, y, e) for x, y, e in zip(xs, ys, errors) if y is not None]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    axes.errorbar([p[0] for p in points], [p[1] for p in points],
                  yerr=[p[2] or 0.0 for p in points], marker="o", capsize=3)
    if x_scale == "symlog":
        axes.set_xscale("symlog", linthresh=1)
    elif x_scale == "log2":
        axes.set_xscale("log", base=2)
    if x_scale in ("symlog", "log2"):             # label the measured points, not powers of ten
        axes.set_xticks([p[0] for p in points])
        axes.set_xticklabels([f"{p[0]:g}" for p in points])
        axes.minorticks_off()
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
