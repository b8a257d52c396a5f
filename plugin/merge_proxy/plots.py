"""The report's figures, drawn from an :class:`~merge_proxy.analysis.Analysis`.

Which figure helps depends on the sweep: with 2 domains a mixture is one number (the first domain's
weight) and a line per benchmark shows the whole landscape; with 3 domains the mixtures fill a triangle
(the simplex) and a ternary heat map shows where the good region is; with 4 or more the simplex cannot
be drawn, and the aggregate against each domain's weight shows which domains the good mixtures lean on;
with truth runs, a proxy-vs-truth
scatter shows at a glance whether the proxy ranks like the real models.

matplotlib is imported inside the functions (the package stays import-light) and only through
``Figure`` and the Agg canvas, never ``pyplot``: no GUI backend, no global state changed in the caller's
process. File names are fixed, so a report's Markdown can link them and reruns overwrite nothing else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from merge_proxy.analysis import Analysis, BenchmarkAnalysis

SCORE_VS_WEIGHT = "score_vs_weight.png"
TERNARY = "ternary_aggregate.png"
DOMAIN_WEIGHTS = "score_vs_domain_weights.png"
PROXY_VS_TRUTH = "proxy_vs_truth.png"
DPI = 110
_SQRT3_2 = math.sqrt(3) / 2


def require_matplotlib() -> None:
    """Fail early, with the install command, when matplotlib is missing (an environment that
    installed merge-proxy without its dependencies)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from merge_proxy.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", "report", "drawing the report's plots") from None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    # No "Software" entry: the bytes then depend on the data, not on the matplotlib version.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _weight_series(analysis: Analysis, name: str, first: str) -> tuple[list, list]:
    """(weight, proxy score) and (weight, truth score) points of one benchmark (or the aggregate)."""
    agg = name == "aggregate"
    pts, truth_pts = [], []
    for m in analysis.mixtures:
        w = m.weights[first]
        value = m.aggregate if agg else m.scores.get(name)
        if value is not None:
            pts.append((w, value))
        tv = m.truth_aggregate if agg else m.truth_scores.get(name)
        if tv is not None:
            truth_pts.append((w, tv))
    return sorted(pts), sorted(truth_pts)


def plot_score_vs_weight(analysis: Analysis, out_dir: str | Path) -> Path:
    """2 domains: score against the first domain's weight, one panel per benchmark and one for the aggregate.

    Small multiples, each with its own y-axis, rather than one shared axis: benchmarks report on
    different scales (a 0-2000 score beside 0-1 accuracies would flatten the others), and one series per
    panel needs no colour to tell them apart, however many benchmarks there are. Truth scores (when
    given) are hollow diamonds; the recommended mixture is a dashed vertical line in every panel.
    """
    if len(analysis.domains) != 2:
        raise ValueError(f"score_vs_weight needs 2 domains, the sweep has {len(analysis.domains)}")
    first, second = analysis.domains
    series = ["aggregate", *analysis.benchmarks]
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = _figure(3.6 * ncols, 2.9 * nrows)
    rec = analysis.recommended
    for i, name in enumerate(series):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        agg = name == "aggregate"
        pts, truth_pts = _weight_series(analysis, name, first)
        color = "black" if agg else "tab:blue"
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=color,
                    lw=2.2 if agg else 1.4, label="proxy")
        if truth_pts:
            ax.scatter([p[0] for p in truth_pts], [p[1] for p in truth_pts], marker="D", s=36,
                       facecolors="none", edgecolors="tab:red", lw=1.4, label="truth")
        ax.axvline(rec.weights[first], ls="--", color="grey", lw=1, label="recommended")
        ax.set_xlim(0, 1)
        _label_panel(ax, f"{name} (weighted mean)" if agg else name, f"weight of {first} ({second} = 1 - x)", "score")
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(out_dir) / SCORE_VS_WEIGHT)


def _label_panel(ax, title: str, xlabel: str, ylabel: str | None) -> None:
    """The look every small-multiple panel shares: small title, labels and ticks, a light grid."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def barycentric_to_xy(a: float, b: float, c: float) -> tuple[float, float]:
    """Simplex point (weights of corners 0, 1, 2) -> plane: corner 0 at (0, 0), 1 at (1, 0), 2 on top."""
    total = a + b + c
    a, b, c = a / total, b / total, c / total
    return b + c / 2, c * _SQRT3_2


def plot_ternary(analysis: Analysis, out_dir: str | Path) -> Path:
    """3 domains: the aggregate proxy score over the simplex, corners labelled by domain.

    Colour between the mixtures is linear interpolation on their Delaunay triangulation (``tripcolor``),
    drawn only when the points span an area; the mixtures themselves are always drawn as dots, the
    recommended one as a star.
    """
    if len(analysis.domains) != 3:
        raise ValueError(f"the ternary plot needs 3 domains, the sweep has {len(analysis.domains)}")
    import numpy as np
    from matplotlib.tri import Triangulation

    names = analysis.domains
    rows = [m for m in analysis.mixtures if m.aggregate is not None]
    xy = np.array([barycentric_to_xy(*(m.weights[d] for d in names)) for m in rows])
    z = np.array([m.aggregate for m in rows])
    fig = _figure(6.0, 5.4)
    ax = fig.add_subplot()
    vmin, vmax = (float(z.min()), float(z.max())) if z.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    mappable = None
    if len(rows) >= 3:
        try:
            tri = Triangulation(xy[:, 0], xy[:, 1])
            mappable = ax.tripcolor(tri, z, shading="gouraud", cmap="viridis", vmin=vmin, vmax=vmax)
        except (RuntimeError, ValueError):  # collinear or repeated points: no area to fill
            mappable = None
    if len(rows):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=z, cmap="viridis", vmin=vmin, vmax=vmax, s=36,
                        edgecolors="white", linewidths=0.8, zorder=3)
        mappable = mappable or sc
    rec = analysis.recommended
    rx, ry = barycentric_to_xy(*(rec.weights[d] for d in names))
    ax.scatter([rx], [ry], marker="*", s=260, c="red", edgecolors="black", zorder=4, label="recommended")
    corners = [(0.0, 0.0), (1.0, 0.0), (0.5, _SQRT3_2)]
    ax.plot([p[0] for p in corners + corners[:1]], [p[1] for p in corners + corners[:1]], color="black", lw=1)
    offsets = [(-0.04, -0.05, "right"), (1.04, -0.05, "left"), (0.5, _SQRT3_2 + 0.04, "center")]
    for name, (x, y, ha) in zip(names, offsets):
        ax.text(x, y, name, ha=ha, va="center", fontsize=11, fontweight="bold")
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, shrink=0.8, label="aggregate proxy score")
    ax.set_aspect("equal")
    ax.set_xlim(-0.2, 1.2)
    ax.set_ylim(-0.12, _SQRT3_2 + 0.12)
    ax.axis("off")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("aggregate proxy score over the mixtures")
    return _save(fig, Path(out_dir) / TERNARY)


def plot_domain_weights(analysis: Analysis, out_dir: str | Path) -> Path:
    """4 or more domains: the aggregate proxy score against each domain's weight, one panel per domain.

    Each panel is a projection of the simplex onto one axis, so the other domains' weights spread the
    points vertically; what reads off it is where the best mixtures sit along each domain (the top of
    the cloud) and how much a domain's weight alone decides the score. Markers shrink and fade with the
    number of mixtures so that thousands stay readable. Trained mixtures are hollow red diamonds at
    their proxy score; the recommended mixture (every mixture tied for the best) is a red star in
    every panel.
    """
    if len(analysis.domains) < 4:
        raise ValueError(f"the domain-weight plot is for 4 or more domains, the sweep has {len(analysis.domains)}")
    rows = [m for m in analysis.mixtures if m.aggregate is not None]
    trained = [m for m in rows if m.truth_aggregate is not None]
    size, alpha = (18, 0.8) if len(rows) <= 200 else (6, max(0.15, min(0.8, 200 / len(rows))))
    ncols = min(4, len(analysis.domains))
    nrows = math.ceil(len(analysis.domains) / ncols)
    fig = _figure(3.2 * ncols, 2.8 * nrows)
    recommended = set(analysis.best["aggregate"])
    best = [m for m in rows if m.mixture_id in recommended]
    label = "recommended" if len(best) == 1 else f"recommended (tie of {len(best)})"
    ax0 = None
    for i, domain in enumerate(analysis.domains):
        ax = fig.add_subplot(nrows, ncols, i + 1, sharey=ax0)
        ax0 = ax0 or ax
        ax.scatter([m.weights[domain] for m in rows], [m.aggregate for m in rows], s=size, alpha=alpha,
                   color="tab:blue", linewidths=0, label="proxy")
        if trained:
            ax.scatter([m.weights[domain] for m in trained], [m.aggregate for m in trained], marker="D", s=30,
                       facecolors="none", edgecolors="tab:red", lw=1.2, label="trained")
        ax.scatter([m.weights[domain] for m in best], [m.aggregate for m in best], marker="*", s=180, c="red",
                   edgecolors="black", zorder=3, label=label)
        ax.set_xlim(-0.02, 1.02)
        _label_panel(ax, domain, f"weight of {domain}", "aggregate proxy score" if i % ncols == 0 else None)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(out_dir) / DOMAIN_WEIGHTS)


def _fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _scatter_panel(ax, comp: BenchmarkAnalysis) -> None:
    ids = sorted(comp.proxy_scores)
    x = [comp.proxy_scores[m] for m in ids]
    y = [comp.truth_scores[m] for m in ids]
    ax.scatter(x, y, s=28, color="tab:blue", alpha=0.8)
    # every tied mixture is marked: the first by mixture_id is no more the pick than the others
    picks = comp.proxy_best_tied
    if picks:
        ax.scatter([comp.proxy_scores[m] for m in picks], [comp.truth_scores[m] for m in picks], marker="*",
                   s=200, c="red", edgecolors="black", zorder=3,
                   label="proxy's pick" if len(picks) == 1 else f"proxy's pick (tie of {len(picks)})")
    bests = comp.truth_best_tied
    if bests:
        ax.scatter([comp.proxy_scores[m] for m in bests], [comp.truth_scores[m] for m in bests], marker="o",
                   s=160, facecolors="none", edgecolors="green", lw=2, zorder=3, label="truth's best")
    rho = comp.spearman
    _label_panel(ax, f"{comp.benchmark}: Spearman {_fmt(rho.value)} [{_fmt(rho.low)}, {_fmt(rho.high)}], n={comp.n}",
                 "proxy score", "truth score")


def _truth_panels(analysis: Analysis) -> list[BenchmarkAnalysis]:
    """The comparisons that have proxy-truth pairs: the aggregate has none when no mixture has truth on
    every weighted benchmark, while single benchmarks still do."""
    if analysis.truth is None:
        return []
    return [c for c in (analysis.truth.aggregate, *analysis.truth.benchmarks) if c.n > 0]


def plot_proxy_vs_truth(analysis: Analysis, out_dir: str | Path) -> Path:
    """Any number of domains, with truth: proxy against truth, the aggregate then each benchmark, each
    panel drawn when it has pairs."""
    if analysis.truth is None:
        raise ValueError("proxy_vs_truth needs truth records")
    panels = _truth_panels(analysis)
    if not panels:
        raise ValueError("proxy_vs_truth needs a mixture scored by both proxy and truth")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(3.6 * ncols, 3.2 * nrows)
    for i, comp in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _scatter_panel(ax, comp)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(out_dir) / PROXY_VS_TRUTH)


def write_plots(analysis: Analysis, out_dir: str | Path) -> list[Path]:
    """Every figure that applies to this sweep, written into ``out_dir``; returns their paths."""
    require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if len(analysis.domains) == 2:
        written.append(plot_score_vs_weight(analysis, out))
    if len(analysis.domains) == 3:
        written.append(plot_ternary(analysis, out))
    if len(analysis.domains) >= 4:
        written.append(plot_domain_weights(analysis, out))
    if _truth_panels(analysis):
        written.append(plot_proxy_vs_truth(analysis, out))
    return written
