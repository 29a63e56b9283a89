"""Report figures (matplotlib, PNG): Fig. 3a/3b (MMD, explicit vs implicit), Fig. 5 (scalability),
tuning-distribution sensitivity, p_bias curve. Each function returns the written path or None when the
sweep holds no data for the figure; ``variant`` is the setting variant's label (:func:`.tables.setting_variants`),
added to the title when the report has several."""
from __future__ import annotations

import math
from pathlib import Path

from ..data.factors import FACTORS, NUM_CLASSES
from ..methods.registry import method_name, method_order
from ..utils import atomic_write

CHANCE = 100.0 / NUM_CLASSES
"""Accuracy of a guess (%), drawn as a reference line where accuracy is plotted."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    _plt().close(fig)
    return path


COLORS = {"explicit": "#dd8452", "implicit": "#4c72b0"}


def _accuracy_axis(ax, values) -> None:
    """The y axis of an unbiased-accuracy plot: from 0, to the next ten above the highest value (at least 30),
    with chance as a dashed line, so that a spread of a point or two, the noise of one seed, does not fill the
    plot as a trend would."""
    finite = [v for v in values if v == v]
    top = max(finite) if finite else CHANCE
    ax.axhline(CHANCE, color="grey", lw=0.8, ls="--", label=f"chance ({CHANCE:g} %)")
    ax.set_ylim(0, max(30.0, min(100.0, 10 * math.ceil(top / 10 + 0.5))))
    ax.set_ylabel("unbiased test accuracy (%)")


def _paired_boxes(ax, groups: list[str], points: list[dict], key: str) -> None:
    """Per group an explicit and an implicit box, with every run's point on it in the box's colour (a box of
    one run is a bare line, whose colour alone would not say which kind it is); medians in black."""
    for i, g in enumerate(groups):
        for j, kind in enumerate(("explicit", "implicit")):
            vals = [p["mmd"] for p in points if p[key] == g and p["kind"] == kind]
            if not vals:
                continue
            pos = i + (j - 0.5) * 0.36
            bp = ax.boxplot(vals, positions=[pos], widths=0.3, patch_artist=True, showfliers=False,
                            medianprops={"color": "black"})
            for patch in bp["boxes"]:
                patch.set_facecolor(COLORS[kind])
            ax.scatter([pos] * len(vals), vals, s=12, color=COLORS[kind], edgecolors="black", linewidths=0.4,
                       zorder=3)
    ax.set_xticks(range(len(groups)))
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("MMD (majority − minority test accuracy, points)")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLORS[k], label=k) for k in COLORS], loc="best", fontsize=8)


def fig3a(points: list[dict], path: Path, variant: str = "") -> Path | None:
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    _paired_boxes(ax, list(FACTORS), points, "factor")
    ax.set_xticklabels([f.replace("_", "\n") for f in FACTORS], fontsize=8)
    ax.set_title("Fig. 3a: bias exploitation per factor, explicit vs implicit (all methods)"
                 + (f"\n{variant}" if variant else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig3b(points: list[dict], path: Path, variant: str = "") -> Path | None:
    methods = method_order(p["method"] for p in points)
    if not methods:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    _paired_boxes(ax, methods, points, "method")
    ax.set_xticklabels([method_name(m) for m in methods], fontsize=9)
    ax.set_title("Fig. 3b: bias exploitation per method, explicit vs implicit factors"
                 + (f"\n{variant}" if variant else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig5(data: dict, path: Path, variant: str = "") -> Path | None:
    if not any(k > 0 for d in data.values() for k in d):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ks = list(range(1, 8))
    for m in method_order(data):
        d = data[m]
        if 0 in d:  # implicit method: a flat reference line
            ax.plot(ks, [d[0]] * len(ks), ls="--", label=method_name(m))
        else:
            xs = sorted(k for k in d if k > 0)
            ax.plot(xs, [d[k] for k in xs], marker="o", label=method_name(m))
    ax.set_xlabel("number of explicit bias variables\n(added in the paper's order: shape, texture, digit colour, "
                  "background,\ntexture colour, distractor colour, position)", fontsize=8)
    ax.set_xticks(ks)  # whole numbers of variables, also when only some are present
    ax.set_xlim(0.5, 7.5)
    _accuracy_axis(ax, [v for d in data.values() for v in d.values()])
    ax.set_title("Fig. 5: scalability to multiple explicit biases" + (f"\n{variant}" if variant else ""), fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def tuning_figure(data: dict, path: Path, variant: str = "") -> Path | None:
    if not data:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    methods = method_order(data)
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    for i, m in enumerate(methods):
        alphas = sorted(data[m])
        c = cmap(i)
        ax.plot(alphas, [data[m][a]["majority"] for a in alphas], color=c, marker="o",
                label=f"{method_name(m)} majority")
        ax.plot(alphas, [data[m][a]["minority"] for a in alphas], color=c, marker="s", ls="--",
                label=f"{method_name(m)} minority")
    ax.set_xlabel("tuning distribution alpha (−1 inverted, 0 balanced, 1 training, 2 more biased)")
    ax.set_ylabel("test accuracy (%), mean over factors")
    ax.set_title("Sensitivity to the tuning distribution (epoch/hyperparameters chosen under alpha)"
                 + (f"\n{variant}" if variant else ""), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: 16 lines cross the middle
    fig.tight_layout()
    return _save(fig, path)


def p_bias_figure(data: dict, path: Path, variant: str = "") -> Path | None:
    """Unbiased accuracy per method against the p_bias the runs vary (:func:`.tables.p_bias_data`)."""
    if not data:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = data["methods"]
    for m in method_order(methods):
        ps = sorted(methods[m])
        ax.plot(ps, [methods[m][p] for p in ps], marker="o", label=method_name(m))
    if data["axis"] == "all":
        ax.set_xlabel("p_bias (probability of the class-aligned value, every factor)")
    else:
        others = f" (the other factors at {data['others']:g})" if data.get("others") is not None else ""
        ax.set_xlabel(f"p_bias of {data['axis']}{others}")
    _accuracy_axis(ax, [v for m in methods.values() for v in m.values()])
    ax.set_title("Unbiased accuracy against bias strength" + (f"\n{variant}" if variant else ""), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
