"""The report's matplotlib figures: the paper's Figures 4/5 (top-1 against mult-adds and against
parameters, with the published points) and top-1 against measured latency; save_png."""

from __future__ import annotations

from pathlib import Path

from .. import published
from ..checkpoint import atomic_write_bytes
from .runs import LATENCY_THREADS, VARIANT_NAMES, Latency, Result
from .tables import frontier, latency_columns

VARIANT_MARKERS = {"separable": "o", "conv": "D", "shallow": "v"}
PUBLISHED_STYLE = {  # source -> (marker, legend label)
    "paper": ("s", "paper (Tables 4-7, 9)"),
    "tf_slim": ("^", "TF-slim release (16 checkpoints)"),
    "timm": ("*", "timm ra4 recipe (3600 epochs)"),
    "tf_model_garden": ("P", "TF Model Garden (500 epochs)"),
}



def _plot_published(ax, source: str, points: list[published.Published], colors: dict, x: str) -> None:
    """One source's published points, one group per (variant, alpha); non-separable models are labelled."""
    marker, _label = PUBLISHED_STYLE[source]
    groups: dict[tuple, list[published.Published]] = {}
    for p in points:
        groups.setdefault((p.variant, p.alpha), []).append(p)
    for (variant, alpha), ps in groups.items():
        ps.sort(key=lambda p: p.mult_adds_m)
        xs = [p.mult_adds_m if x == "mult_adds" else p.params_m for p in ps]
        ax.plot(xs, [p.top1 for p in ps], marker=marker, markersize=7, color=colors[alpha],
                markerfacecolor="none" if source == "paper" else colors[alpha], alpha=0.75,
                linestyle=":" if source == "tf_slim" else "none", linewidth=1, gid=f"published:{source}")
        if variant != "separable":
            for p, xv in zip(ps, xs):
                ax.annotate(p.model, (xv, p.top1), textcoords="offset points", xytext=(0, -9), fontsize=8,
                            color="0.35", ha="center", va="top")


def _plot_runs(ax, results: list[Result], colors: dict, x: str) -> None:
    """The runs: one line per (data, variant, alpha) through its resolutions; hollow = still in progress."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        if not r.quantized:  # exported int8 files: in the latency figure, beside their fp32 model
            groups.setdefault((r.dataset or "?", r.variant, r.alpha), []).append(r)
    for (_, variant, alpha), rs in sorted(groups.items(),
                                          key=lambda kv: (kv[0][0], kv[0][1] != "separable", -kv[0][2])):
        rs.sort(key=lambda r: getattr(r, x))
        xs = [getattr(r, x) / 1e6 for r in rs]
        ax.plot(xs, [r.top1 for r in rs], color=colors[alpha], linewidth=2)
        for filled in (True, False):
            pts = [(xv, r.top1) for xv, r in zip(xs, rs) if r.in_progress != filled]
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker=VARIANT_MARKERS.get(variant, "o"), markersize=8,
                        color=colors[alpha], markerfacecolor=colors[alpha] if filled else "white", gid="run")
        for xv, r in zip(xs, rs):
            ax.annotate(str(r.resolution), (xv, r.top1), textcoords="offset points", xytext=(5, 5), fontsize=8,
                        color=colors[alpha])


def _plot_frontiers(ax, results: list[Result], x: str) -> list[list[int]]:
    """The runs' Pareto frontiers (one per dataset), circled; returns them."""
    fronts = frontier(results, x)
    for front in fronts:
        fx = [getattr(results[i], x) / 1e6 for i in front]
        fy = [results[i].top1 for i in front]
        ax.plot(fx, fy, drawstyle="steps-post", linestyle="--", color="black", linewidth=1.2, alpha=0.7,
                marker="o", markersize=15, markerfacecolor="none", markeredgewidth=1.2, gid="frontier")
    return fronts


def _figure_legend(ax, results: list[Result], alphas: list[float], colors: dict, fronts: list[list[int]]) -> None:
    """Legend: colour says alpha, marker and line style say where a point comes from."""
    from matplotlib.lines import Line2D

    entries = [(Line2D([], [], color=colors[a], linewidth=4), f"α = {a}") for a in alphas]
    for variant in sorted({r.variant for r in results}, key=lambda v: v != "separable"):
        entries.append((Line2D([], [], color="0.3", linewidth=2, marker=VARIANT_MARKERS.get(variant, "o")),
                        f"your runs: {VARIANT_NAMES.get(variant, variant)}"))
    if any(r.in_progress for r in results):
        entries.append((Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none"),
                        "in progress (best epoch so far)"))
    entries.append((Line2D([], [], color="black", linestyle="--", marker="o", markersize=12, markerfacecolor="none"),
                    "Pareto frontier of your runs" + (" (per dataset)" if len(fronts) > 1 else "")))
    for source, (marker, label) in PUBLISHED_STYLE.items():
        entries.append((Line2D([], [], color="0.3", marker=marker,
                               markerfacecolor="none" if source == "paper" else "0.3",
                               linestyle=":" if source == "tf_slim" else "none"), f"{label}, ImageNet"))
    ax.legend(*zip(*entries), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def figure(results: list[Result], x: str):
    """Figure 4 (x='mult_adds') or Figure 5 (x='params'). Artists carry a gid: 'run' (one point
    per result), 'frontier', 'published:paper' and 'published:tf_slim' (one point per model)."""
    from matplotlib.figure import Figure

    xlabel = {"mult_adds": "mult-adds per image (millions, log scale)",
              "params": "parameters (millions, log scale)"}[x]
    title = {"mult_adds": "Top-1 accuracy vs computation (cf. paper Figure 4)",
             "params": "Top-1 accuracy vs model size (cf. paper Figure 5)"}[x]
    pub = {source: published.unique_points(source) for source in PUBLISHED_STYLE}
    alphas = sorted({r.alpha for r in results} | {p.alpha for ps in pub.values() for p in ps}, reverse=True)
    colors = {a: f"C{i % 10}" for i, a in enumerate(alphas)}

    fig = Figure(figsize=(10, 6.2), layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")
    # Published points first, so the runs draw on top of them.
    for source in PUBLISHED_STYLE:
        _plot_published(ax, source, pub[source], colors, x)
    _plot_runs(ax, results, colors, x)
    fronts = _plot_frontiers(ax, results, x)
    _figure_legend(ax, results, alphas, colors, fronts)
    datasets = ", ".join(sorted({r.dataset or "?" for r in results}))
    ax.set_title(f"{title}\nruns: best val top-1 on {datasets}; labels: input resolution", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    return fig


def latency_figure(results: list[Result], latency: dict[tuple, Latency]):
    """Top-1 against batch-1 latency: per alpha, one line through the resolutions for each of eager
    fp32 (dotted, hollow), the fastest fp32 export (solid) and the fastest int8 export (dashed)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(10, 6.2), layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")
    alphas = sorted({r.alpha for r in results}, reverse=True)
    colors = {a: f"C{i % 10}" for i, a in enumerate(alphas)}
    styles = {"latency_eager_ms": (":", "white"), "latency_fp32_ms": ("-", None), "latency_int8_ms": ("--", None)}
    matched = [r for r in results if r.key() in latency and not r.quantized]
    groups: dict[tuple, list[Result]] = {}
    for r in matched:
        groups.setdefault((r.dataset or "?", r.variant, r.alpha), []).append(r)
    for (_, _, alpha), rs in groups.items():
        for column, (linestyle, face) in styles.items():
            pts = sorted((v, r.top1, r.resolution) for r in rs
                         if (v := latency_columns(latency[r.key()]).get(column)) is not None)
            if not pts:
                continue
            xs, ys, res = zip(*pts)
            ax.plot(xs, ys, linestyle=linestyle, marker="o", color=colors[alpha], markerfacecolor=face or colors[alpha],
                    gid=column)
            if column == "latency_fp32_ms":
                for xv, yv, rv in pts:
                    ax.annotate(str(rv), (xv, yv), textcoords="offset points", xytext=(5, 5), fontsize=8,
                                color=colors[alpha])
    shown = _plot_quantized(ax, [r for r in results if r.key() in latency and r.quantized], latency, colors)
    entries = [(Line2D([], [], color=colors[a], linewidth=4), f"α = {a}") for a in alphas]
    entries += [(Line2D([], [], color="0.3", linestyle=":", marker="o", markerfacecolor="white"), "eager PyTorch fp32"),
                (Line2D([], [], color="0.3", linestyle="-", marker="o"), "fastest fp32 export"),
                (Line2D([], [], color="0.3", linestyle="--", marker="o"), "fastest int8 export (fp32 top-1)")]
    entries += [(Line2D([], [], color="0.3", linestyle="none", marker=QUANTIZED_MARKERS.get(q, "P"), markersize=9),
                 f"{q} file's own top-1") for q in shown]
    ax.legend(*zip(*entries), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    cpus = ", ".join(sorted({lat.cpu for lat in latency.values()}))
    ax.set_title(f"Top-1 accuracy vs measured latency (batch 1, {LATENCY_THREADS} thread, {cpus})\n"
                 f"top-1: the fp32 model's; labels: input resolution", fontsize=11)
    ax.set_xlabel("latency per image (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    return fig


QUANTIZED_MARKERS = {"int8-ptq": "X", "int8-qat": "*", "uint8-google": "P"}


def _plot_quantized(ax, results: list[Result], latency: dict[tuple, Latency], colors: dict) -> list[str]:
    """Scored int8 files (eval.json of mobilenet-eval FILE): their own top-1 at the int8 latency of
    their architecture, one marker per kind (PTQ, QAT, Google's); returns the kinds shown."""
    kinds = []
    for r in results:
        x = latency[r.key()].int8_ms
        if x is None:
            continue
        ax.plot([x], [r.top1], linestyle="none", marker=QUANTIZED_MARKERS.get(r.quantization, "P"), markersize=11,
                color=colors.get(r.alpha, "0.3"), markeredgecolor="black", gid=f"quantized:{r.quantization}")
        kinds += [r.quantization] if r.quantization not in kinds else []
    return kinds


def save_png(fig, path: Path) -> None:
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
