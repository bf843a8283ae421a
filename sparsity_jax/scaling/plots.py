"""Figures for the activation-ratio scaling fits (Sparsing Law §4.2 Fig. 4, and the §5
derivative figure, Fig. 8 in our copy of the paper): measured curves with the fits
overlaid, and dA/d(data-scale ratio) per model size. Plotting only; fits come from `fit`.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparsity_jax.runtime.workdir import PathLike, as_path, save_figure  # noqa: E402
from sparsity_jax.scaling.fit import (  # noqa: E402
    TOKENS_PER_D, CurveFit, builtin_n_params, derivative_vs_data_ratio, fit_builtin, load_builtin)

PANELS = (("relu", "ReLU"), ("silu", "SiLU"))


def _colors(names) -> dict[str, tuple]:
    cmap = plt.get_cmap("viridis")
    names = sorted(names)
    return {n: cmap(i / max(len(names) - 1, 1)) for i, n in enumerate(names)}


def plot_activation_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                           fits: Mapping[str, CurveFit], path: PathLike) -> str:
    """Fig. 4 style: activation ratio (%) vs training tokens (billions), one panel per
    form, measured points per model with the fitted law as a line; dropped warm-up
    points hollow. `curves` maps name → (tokens, ratio); returns `path` (PNG)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (form, title) in zip(axes, PANELS):
        names = [n for n in curves if n in fits and fits[n].form == form]
        colors = _colors(names)
        for name in sorted(names):
            (t, y), f = curves[name], fits[name]
            order = np.argsort(t)
            D, pct = t[order] / TOKENS_PER_D, 100 * y[order]
            ax.scatter(D[f.dropped:], pct[f.dropped:], s=12, color=colors[name], label=name.split("_")[0])
            ax.scatter(D[:f.dropped], pct[:f.dropped], s=12, facecolors="none", edgecolors=colors[name])
            grid = np.geomspace(D[f.dropped], D[-1], 200)
            ax.plot(grid, 100 * f.predict(grid), color=colors[name], lw=1.2)
        ax.set(title=f"{title}: activation ratio vs training data", xlabel="training tokens (billions)",
               ylabel="activation ratio (%)")
        if names:
            ax.legend(fontsize=8, title="model (line = fit)", title_fontsize=8)
    return str(save_figure(fig, path, tight=True))


def plot_derivatives(fits: Mapping[str, CurveFit], n_params: Mapping[str, float], path: PathLike,
                     ratios: np.ndarray | None = None) -> str:
    """Derivative figure (Sparsing Law §5): dA/d(ratio) in activation-ratio % per unit of
    data-scale ratio (tokens / non-embedding parameters), one panel per form, for the
    models in `n_params`; dashed outside each model's fitted data range. Default grid:
    200 log-spaced ratios over 5–300."""
    ratios = np.geomspace(5, 300, 200) if ratios is None else np.asarray(ratios, dtype=float)
    fits = {n: f for n, f in fits.items() if n in n_params}
    derivs = derivative_vs_data_ratio(fits, n_params, ratios)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (form, title) in zip(axes, PANELS):
        names = sorted(n for n in fits if fits[n].form == form)
        colors = _colors(names)
        for name in names:  # solid over the fitted data range, dashed where extrapolated
            lo, hi = (d * TOKENS_PER_D / n_params[name] for d in fits[name].d_range)
            inside = (ratios >= lo) & (ratios <= hi)
            ax.plot(ratios, np.where(inside, np.nan, 100 * derivs[name]), color=colors[name], ls="--", lw=0.8)
            ax.plot(ratios, np.where(inside, 100 * derivs[name], np.nan), color=colors[name], label=name.split("_")[0])
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xscale="log", title=f"{title}: derivative of the fitted curve",
               xlabel="data-scale ratio (tokens / non-embedding params)", ylabel="dA/d(ratio) (% per unit)")
        if names:
            ax.legend(fontsize=8)
    return str(save_figure(fig, path, tight=True))


def plot_builtin(out_dir: PathLike, fits: Mapping[str, CurveFit] | None = None) -> list[str]:
    """Fits the shipped curves (unless `fits` is given) and writes
    activation_vs_tokens.png and derivative_vs_data_ratio.png under `out_dir`."""
    fits = fit_builtin() if fits is None else fits
    out = as_path(out_dir)
    return [plot_activation_curves(load_builtin(), fits, out / "activation_vs_tokens.png"),
            plot_derivatives(fits, builtin_n_params(fits), out / "derivative_vs_data_ratio.png")]
