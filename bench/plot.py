"""Plot tokens/s against context length (log2 axis) from bench/train_step.py's JSON.

    python bench/plot.py bench/results/train_step.json --out bench/train_step.png

With matplotlib installed (`pip install -e .[bench]`) the plot is a PNG; without it, an SVG is
written by hand next to the requested path (same name, .svg), so a bare GPU machine still
produces a figure. xLSTM models are solid lines, baselines dashed; a context that ran out of
memory is marked with an x on the bottom axis. The y axis is logarithmic: attention's cost grows
with the context and spans decades.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def series(results: list[dict]) -> dict:
    """model -> {"family", "points": [(context, tokens/s)], "oom": [context]} in context order."""
    out = {}
    for row in sorted(results, key=lambda r: r["context_len"]):
        entry = out.setdefault(row["model"], {"family": row.get("family", "xlstm"), "points": [], "oom": []})
        if row["status"] == "ok" and row.get("tokens_per_s"):
            entry["points"].append((row["context_len"], row["tokens_per_s"]))
        elif str(row["status"]).startswith("OOM"):
            entry["oom"].append(row["context_len"])
    return out


def title_of(meta: dict) -> str:
    return f"Training step throughput, {meta.get('device', '?')}, {meta.get('dtype', '')}, " \
           f"{meta.get('tokens_per_step', '?')} tokens/step"


def plot_matplotlib(data: dict, meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (model, entry) in enumerate(data.items()):
        color = COLORS[index % len(COLORS)]
        style = "-" if entry["family"] == "xlstm" else "--"
        if entry["points"]:
            xs, ys = zip(*entry["points"])
            ax.plot(xs, ys, style, marker="o", color=color, label=model)
        for context in entry["oom"]:
            ax.plot([context], [0], marker="x", color=color, clip_on=False, transform=ax.get_xaxis_transform())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("tokens / s")
    ax.set_title(title_of(meta), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in ((1,) if high / low > 1000 else (1, 2, 5)):
            value = mantissa * 10 ** exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks or [low, high]


def _number(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def svg_text(data: dict, meta: dict, width: int = 760, height: int = 460) -> str:
    """A self-contained SVG of the same plot (no plotting library)."""
    left, right, top, bottom = 70, 190, 40, 50
    contexts = sorted({c for e in data.values() for c, _ in e["points"]} | {c for e in data.values() for c in e["oom"]})
    values = [v for e in data.values() for _, v in e["points"]]
    if not contexts:
        contexts = [1, 2]
    if not values:
        values = [1.0, 10.0]
    x_low, x_high = math.log2(min(contexts)), math.log2(max(contexts))
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = math.log10(min(values)) - 0.1, math.log10(max(values)) + 0.1

    def px(context):
        return left + (math.log2(context) - x_low) / (x_high - x_low) * (width - left - right)

    def py(value):
        return top + (y_high - math.log10(value)) / (y_high - y_low) * (height - top - bottom)

    base = height - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="13">{escape(title_of(meta))}</text>',
             f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="black"/>']
    for context in contexts:
        x = px(context)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{base}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">2^{int(round(math.log2(context)))}</text>')
    for value in _log_ticks(10 ** y_low, 10 ** y_high):
        y = py(value)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(value)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 12}" text-anchor="middle">'
                 f'context length (tokens, log2)</text>')
    parts.append(f'<text x="16" y="{(top + base) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 16 {(top + base) / 2:.0f})">tokens / s (log)</text>')
    for index, (model, entry) in enumerate(data.items()):
        color = COLORS[index % len(COLORS)]
        dash = "" if entry["family"] == "xlstm" else ' stroke-dasharray="6 4"'
        if entry["points"]:
            coords = " ".join(f"{px(c):.1f},{py(v):.1f}" for c, v in entry["points"])
            parts.append(f'<polyline class="series" data-model="{escape(model)}" points="{coords}" fill="none" '
                         f'stroke="{color}" stroke-width="2"{dash}/>')
            for c, v in entry["points"]:
                parts.append(f'<circle cx="{px(c):.1f}" cy="{py(v):.1f}" r="3" fill="{color}">'
                             f'<title>{escape(model)} {c}: {v:,.0f} tokens/s</title></circle>')
        for c in entry["oom"]:
            x = px(c)
            parts.append(f'<text class="oom" x="{x:.1f}" y="{base - 4}" text-anchor="middle" fill="{color}" '
                         f'font-weight="bold">x<title>{escape(model)} {c}: out of memory</title></text>')
        y_legend = top + 10 + 20 * index
        parts.append(f'<line x1="{width - right + 12}" y1="{y_legend}" x2="{width - right + 40}" y2="{y_legend}" '
                     f'stroke="{color}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{width - right + 46}" y="{y_legend + 4}">{escape(model)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_plot(results_path: Path, out: Path, force_svg: bool = False) -> Path:
    """Write the plot; returns the path written (the .svg twin of `out` without matplotlib)."""
    report = json.loads(Path(results_path).read_text())
    data, meta = series(report["results"]), report.get("meta", {})
    out.parent.mkdir(parents=True, exist_ok=True)
    if not force_svg and out.suffix != ".svg":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("[plot] matplotlib not installed: writing an SVG instead (pip install -e .[bench] for PNG)",
                  file=sys.stderr)
        else:
            plot_matplotlib(data, meta, out)
            return out
    svg_path = out.with_suffix(".svg")
    svg_path.write_text(svg_text(data, meta))
    return svg_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="JSON written by bench/train_step.py --out")
    parser.add_argument("--out", default="bench/train_step.png", help="figure path (default bench/train_step.png)")
    parser.add_argument("--svg", action="store_true", help="write the hand-made SVG even if matplotlib exists")
    args = parser.parse_args(argv)
    if not Path(args.results).is_file():
        print(f"error: {args.results}: no such file; run bench/train_step.py --out {args.results} first",
              file=sys.stderr)
        return 2
    written = write_plot(Path(args.results), Path(args.out), force_svg=args.svg)
    print(f"[plot] wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
