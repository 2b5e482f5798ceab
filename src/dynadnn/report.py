"""Figures: accuracy against latency per hardware context, with the family members highlighted.

Drawn with matplotlib's Agg backend (no display needed), written as PNG atomically.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .family import Family


def plot_front(family: Family, out: str | Path, title: str | None = None) -> Path:
    """One panel per context: the search archive (predicted top-1 vs predicted latency, grey), each member's
    predicted point (hollow) joined to its measured point (filled, labelled by index). `out` is written whole
    or not at all; a directory there is refused before anything is drawn."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"out: {out} is a directory; expected the path of the PNG file to write")
    if not family.contexts:
        raise UserError("family: it has no hardware contexts, so there is no latency to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import atomic_write

    contexts = family.contexts
    fig, axes = plt.subplots(1, len(contexts), figsize=(5.5 * len(contexts), 4.2), squeeze=False)
    for ax, ctx in zip(axes[0], contexts):
        pts = [(e["latency_predicted_ms"][ctx], e["top1_predicted"]) for e in family.archive
               if ctx in e.get("latency_predicted_ms", {}) and e.get("top1_predicted") is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=6, c="0.75", label="search archive (predicted)", zorder=1)
        px = [m.latency_predicted_ms.get(ctx) for m in family.members]
        py = [m.top1_predicted for m in family.members]
        mx = [m.latency(ctx) for m in family.members]
        my = [m.top1 for m in family.members]
        if all(v is not None for v in px + py):
            ax.scatter(px, py, s=40, facecolors="none", edgecolors="tab:blue", label="members (predicted)", zorder=2)
            for a, b, c, d in zip(px, py, mx, my):
                ax.plot([a, c], [b, d], c="tab:blue", lw=0.6, alpha=0.5, zorder=2)
        measured = any(ctx in m.latency_ms for m in family.members)
        ax.plot(mx, my, "-o", c="tab:red", ms=6, label="members (measured)" if measured else "members", zorder=3)
        for i, (x, y) in enumerate(zip(mx, my)):
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set_xlabel(f"latency in {ctx} (ms, batch 1{', median' if measured else ''})")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(ctx)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"family of {len(family.members)} ({family.preset})")
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out


def family_table(family: Family) -> str:
    """The members as a text table: architecture, measured and predicted top-1, latency per context, MACs."""
    contexts = family.contexts
    lines = [f"{'#':>2s} {'arch':44s} {'top1 meas':>9s} {'pred':>6s} " + " ".join(f"{c + ' ms':>12s}" for c in contexts)
             + f" {'MMACs':>7s}"]
    for i, m in enumerate(family.members):
        lines.append(f"{i:2d} {m.arch.short()[:44]:44s} {_fmt(m.top1_measured, 9)} {_fmt(m.top1_predicted, 6)} "
                     + " ".join(f"{m.latency(c):12.3f}" for c in contexts) + f" {m.macs / 1e6:7.2f}")
    return "\n".join(lines)


def _fmt(value: float | None, width: int) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.2f}"
