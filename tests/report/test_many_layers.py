"""The report at 30 layers (synthetic results): every figure that shows a per-layer
quantity has no legend of more than `MAX_LEGEND` entries (a heat map instead), integer
ticks on its layer axes, and tick labels that do not overlap. At 4 layers the curves
keep their legend."""
from __future__ import annotations

import numpy as np
import pytest

from sparsity_jax.report import cett_report, layer_patterns, predictivity, run_report
from sparsity_jax.report.layers import MAX_LEGEND
from sparsity_jax.runtime import names
from sparsity_jax.runtime.logs import MetricsWriter
from sparsity_jax.runtime.workdir import save_figure

F = 64


def check_figure(fig) -> dict:
    """Fails on a legend of more than MAX_LEGEND entries, a non-integer tick on a layer axis
    or overlapping tick labels; returns {"legend": most entries, "heat maps": count}."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    most, heat = 0, 0
    for ax in fig.axes:
        legend = ax.get_legend()
        most = max(most, len(legend.get_texts()) if legend else 0)
        heat += len(ax.collections) > 0 and ax.get_ylabel() == "layer"
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            lo, hi = sorted(axis.get_view_interval())
            shown = [t for t in axis.get_majorticklocs() if lo - 1e-9 <= t <= hi + 1e-9]
            if label == "layer":
                assert shown and all(float(t).is_integer() for t in shown), (label, shown)
            boxes = sorted((text.get_window_extent(renderer) for t in axis.get_major_ticks()
                            if lo - 1e-9 <= t.get_loc() <= hi + 1e-9
                            for text in (t.label1, t.label2) if text.get_visible() and text.get_text()),
                           key=lambda b: b.x0 if axis is ax.xaxis else b.y0)
            assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])), (ax.get_title(), label)
    assert most <= MAX_LEGEND
    return {"legend": most, "heat maps": heat}


@pytest.fixture
def figures(monkeypatch):
    """{file name: check_figure(fig)} of every figure the report modules save."""
    seen = {}

    def save(fig, path, **kw):
        if kw.get("tight"):
            fig.tight_layout()  # as saved
        seen[str(path).rsplit("/", 1)[-1]] = check_figure(fig)
        return save_figure(fig, path, **kw)

    for module in (cett_report, predictivity, run_report, layer_patterns):
        monkeypatch.setattr(module, "save_figure", save)
    return seen


def cdf(rng, layers: int) -> np.ndarray:
    share = np.sort(rng.dirichlet(np.ones(F) * 0.3, size=layers), axis=1)[:, ::-1]
    return np.cumsum(share, axis=1)


class Sweep:
    """The parts of a `workflows.ppl_sweep.PplSweep` that `write_ppl_report` reads."""

    def __init__(self, rng, layers: int):
        rows = [{"step": s, "tokens": 1000 * s, "warmup": s <= 100, "stats": {"dead_ratio": [0.01] * layers},
                 "ppl_p": [{"p": 1, "activation_ratio": 0.3, "sparsity": (0.6 + 0.3 * rng.random(layers)).tolist()}]}
                for s in (100, 200, 300)]
        point = {"activation_ratio": 0.3, "ppl": 10.1, "p": 1, "k": 16, "eps": 0.1}
        search = [{"p": 1, "target_cett": 0.2, "ppl_ratio": 1.01, "activation_ratio": 0.3, "evaluations": 7}]
        self.data = {"checkpoints": rows, "search": search,
                     "pareto": {"ppl_p": [point], "topk": [point], "fat": [], "dense": {"ppl": 10.0}}}
        self.arrays = {"neuron_frequency": rng.beta(0.5, 2.0, size=(layers, F)), "hot_cdf": cdf(rng, layers)}

    def to_json(self) -> dict:
        return self.data


def affinity_result(rng, layers: int) -> dict:
    ratio = (0.2 + 0.2 * rng.random(layers)).tolist()
    return {"step": 300, "target_cett": 0.2, "validation_tokens": 1000, "activation_ratio": ratio,
            "reuse_ratio": {"1": ratio, "4": ratio}, "coactivation_gap": rng.random(layers).tolist(),
            "coactivation_subsampled": False, "coactivation_neurons": F, "hot_neuron_cdf": cdf(rng, layers).tolist(),
            "hot_neuron_share": {"top_10pct": ratio, "top_20pct": ratio}}


def training_logs(workdir, rng, layers: int) -> None:
    w = MetricsWriter(str(workdir))
    for step in range(10, 310, 10):
        use = rng.random(layers)
        w.write(step, {names.LOSS: 3.0 / np.log(step), names.ACTIVATION_RATIO: 0.3 * use})
        w.write(step, {names.ACTIVATION_RATIO: 0.3 * use, names.USE_PER_SEQUENCE: 0.8 * use,
                       names.USE_PER_BATCH: use}, split=names.UNITS)
    w.write(300, {names.LOSS: 1.0}, split=names.EVAL)
    w.close()


def render_all(out, rng, layers: int) -> None:
    """Every figure of report/ that shows per-layer quantities, from synthetic results."""
    cett_report.write_ppl_report(Sweep(rng, layers), out)
    predictivity.write_affinity_report(affinity_result(rng, layers), out)
    q = {name: rng.random(layers).tolist() for name in ("recall", "prediction_sparsity", "true_sparsity")}
    predictivity._layers({"quality": [{"strategy": "threshold", "layers": q}], "rank": 8}, out / "predictor_layers.png")
    training_logs(out.parent, rng, layers)
    run_report.run_report(out.parent, out)


PER_LAYER = ("layer_ratios.png", "neuron_frequency.png", "hot_neurons.png", "coactivation_gap.png",
             "predictor_layers.png", "activation_ratio.png", "use_over_training.png")


def test_thirty_layers_get_heat_maps_and_integer_layer_axes(tmp_path, figures):
    render_all(tmp_path / "report", np.random.default_rng(0), 30)
    assert set(PER_LAYER) <= set(figures)
    heat = {name: f["heat maps"] for name, f in figures.items()}
    assert heat["neuron_frequency.png"] == 2 and heat["hot_neurons.png"] == 1
    assert heat["activation_ratio.png"] == 1 and heat["use_over_training.png"] == 3


def test_four_layers_keep_one_curve_per_layer(tmp_path, figures):
    render_all(tmp_path / "report", np.random.default_rng(0), 4)
    assert figures["neuron_frequency.png"] == {"legend": 4, "heat maps": 0}
    assert figures["activation_ratio.png"]["legend"] == 4
