"""Per-layer figures that read at any depth: one curve per layer with a legend up to
`MAX_LEGEND` layers, a heat map (layer × x, the value on a colour bar) beyond, and
layer axes with integer ticks that the locator keeps apart."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

MAX_LEGEND = 8  # more layers than this: a heat map instead of one legend entry per layer


def integer_axis(axis) -> None:
    """Integer ticks only (layers), at most ~10 of them so their labels never overlap."""

    axis.set_major_locator(MaxNLocator(integer=True, nbins=10))


def legend_below(ax) -> None:
    """The legend under the axes, in one row: it never covers curves drawn over every layer."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, fontsize=8, frameon=False)


def layer_curves(fig, ax, x: Sequence[float], y_LxN, *, xlabel: str, value: str, title: str,
                 legend: bool = True, drawstyle: str = "default") -> bool:
    """`y_LxN[l]` against `x` (N points) for every layer l: lines with a legend (when
    `legend`) up to `MAX_LEGEND` layers, else a heat map with the layer on the y axis and
    `value` on a colour bar. Returns whether it drew lines (callers add reference lines
    only then)."""
    y = np.asarray(y_LxN, float)
    if y.shape[0] <= MAX_LEGEND:
        for layer, row in enumerate(y):
            ax.plot(x, row, drawstyle=drawstyle, label=f"layer {layer}")
        if legend:
            ax.legend(fontsize=7)
        ax.set(xlabel=xlabel, ylabel=value, title=title)
        return True
    mesh = ax.pcolormesh(np.asarray(x, float), np.arange(y.shape[0]), y, shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=value)
    ax.set(xlabel=xlabel, ylabel="layer", title=title)
    integer_axis(ax.yaxis)
    return False
