"""Activation-ratio scaling fits (Sparsing Law §4.2, App. D, Table 2): the shipped curves
against Table 2, parameter recovery on synthetic curves, form selection, the analytic
derivative, warm-up dropping, bad input, and the figures."""
import numpy as np
import pytest

from sparsity_jax.errors import UserError
from sparsity_jax.scaling import (
    TABLE2, builtin_n_params, builtin_table, derivative_vs_data_ratio, fit_activation_curve, fit_builtin, law,
    load_builtin)

CURVES = load_builtin()
NAMES = sorted(CURVES)
# Leading points the paper apparently dropped before fitting: with these, our fit lands on
# Table 2's row (found by scanning the drop count; not stated in the paper). 0.4B ReLU and
# 0.8B SiLU match no leading drop; see sparsity_jax/scaling/data/README.md.
PAPER_DROPS = {"0.1b_relu": 0, "0.2b_relu": 0, "0.8b_relu": 0, "1.2b_relu": 6,
               "0.1b_silu": 5, "0.2b_silu": 6, "0.4b_silu": 8, "1.2b_silu": 9}
SYNTH = {"relu": {"alpha": 0.6, "b": -3.2, "c": 0.12, "A0": 0.07}, "silu": {"alpha": 0.7, "c": 0.15, "A0": 0.39}}
D_SYNTH = np.linspace(2, 150, 40)


@pytest.fixture(scope="module")
def fits():
    return fit_builtin()


def _synthetic(form, seed=0, sigma=3e-4):
    y = law(form, D_SYNTH, SYNTH[form]) + np.random.default_rng(seed).normal(0, sigma, D_SYNTH.shape)
    return D_SYNTH * 1e9, y


def test_eleven_curves_shipped():
    assert len(CURVES) == 11 and set(TABLE2) <= set(CURVES)
    for t, y in CURVES.values():
        assert len(t) == len(y) >= 20 and np.all(np.diff(t) > 0) and np.all((0 < y) & (y < 1))


@pytest.mark.parametrize("name", NAMES)
def test_builtin_fit_beats_table2(name, fits):
    """Least squares from the generic start: SSR ≤ Table 2's on the same points (the
    quantity LM minimises), A0 within max(stderr, 10% of Table 2's A0)."""
    t, y = CURVES[name]
    f = fits[name]
    assert f.form == name.split("_")[1] and f.n_points == len(t) and f.dropped == 0
    assert all(np.isfinite(v) for v in (*f.params.values(), f.mae, f.mse, f.aic))
    assert np.isclose(f.mae, np.mean(np.abs(f.predict_tokens(t) - y)))
    if name not in TABLE2:  # 2.4B ReLU: no Table 2 row, so only sanity
        assert f.mae < 1e-3 and 0 < f.limit < y.min() and np.isfinite(f.stderr["A0"])
        assert np.all(np.diff(f.predict_tokens(t)) < 0)
        return
    paper = TABLE2[name]
    assert f.mse <= np.mean((law(f.form, t / 1e9, paper) - y) ** 2)
    assert abs(f.limit - paper["A0"]) <= max(f.stderr["A0"], 0.1 * paper["A0"])


# 0.2B ReLU: Table 2 is the same least-squares optimum rounded to 3 digits (our SSR is 3%
# lower), and the rounding happens to give a 1.8% lower MAE; LM minimises SSR, not MAE.
MAE_XFAIL = pytest.mark.xfail(strict=True, reason="Table 2's rounded 0.2B ReLU row has a 1.8% lower MAE")


@pytest.mark.parametrize("name", [pytest.param(n, marks=MAE_XFAIL) if n == "0.2b_relu" else n for n in sorted(TABLE2)])
def test_builtin_mae_not_above_table2(name, fits):
    t, y = CURVES[name]
    assert fits[name].mae <= np.mean(np.abs(law(fits[name].form, t / 1e9, TABLE2[name]) - y))


@pytest.mark.parametrize("name", sorted(PAPER_DROPS))
def test_reproduces_table2_with_the_papers_warmup_drop(name):
    t, y = CURVES[name]
    f = fit_activation_curve(t, y, name.split("_")[1], drop_warmup=PAPER_DROPS[name])
    for k, v in TABLE2[name].items():
        assert np.isclose(f.params[k], v, rtol=0.05, atol=0.005), (k, f.params[k], v)


def test_builtin_table_rows(fits):
    rows = {r["name"]: r for r in builtin_table(fits)}
    assert set(rows) == set(CURVES)
    assert rows["2.4b_relu"]["paper_mae"] is None and rows["2.4b_relu"]["paper_params"] is None
    for name, r in rows.items():
        assert r["params"] == fits[name].params and r["mae"] == fits[name].mae
        assert r["paper_mse"] is None or r["mse"] <= r["paper_mse"]


@pytest.mark.parametrize("form", ["relu", "silu"])
def test_recovers_synthetic_parameters(form):
    f = fit_activation_curve(*_synthetic(form), form)
    for k, true in SYNTH[form].items():
        se = f.stderr[k]
        assert np.isfinite(se) and 0 < se < 0.25 * abs(true), (k, se)
        assert abs(f.params[k] - true) <= 3 * se, (k, f.params[k], true, se)
    assert f.mse == pytest.approx(3e-4**2, rel=0.5)


@pytest.mark.parametrize("form", ["relu", "silu"])
def test_auto_picks_generating_form(form):
    f = fit_activation_curve(*_synthetic(form), "auto")
    assert f.form == form and set(f.aics) == {"relu", "silu"}
    assert f.aic == min(f.aics.values()) == f.aics[form]


@pytest.mark.parametrize("name", ["0.2b_relu", "1.2b_relu", "0.4b_silu"])
def test_derivative_matches_finite_difference(name, fits):
    f, D, h = fits[name], np.geomspace(1, 300, 25), 1e-5
    fd = (f.predict(D * (1 + h)) - f.predict(D * (1 - h))) / (2 * h * D)
    np.testing.assert_allclose(f.derivative(D), fd, rtol=1e-5, atol=1e-12)


def test_derivative_vs_data_ratio_chain_rule(fits):
    n_params = builtin_n_params(fits)
    assert "2.4b_relu" not in n_params and len(n_params) == 10
    ratios = np.array([10.0, 50.0, 200.0])
    sub = {n: fits[n] for n in n_params}
    out = derivative_vs_data_ratio(sub, n_params, ratios)
    for name, d in out.items():
        N = n_params[name]
        np.testing.assert_allclose(d, fits[name].derivative(ratios * N / 1e9) * N / 1e9)
        assert np.all(d < 0) if name.endswith("relu") else np.all(d > 0)
    with pytest.raises(UserError, match="non-embedding"):
        derivative_vs_data_ratio(fits, n_params, ratios)


@pytest.mark.parametrize("drop", [0, 3, 7])
def test_drop_warmup(drop):
    t, y = _synthetic("silu")
    order = np.random.default_rng(1).permutation(len(t))  # input order does not matter
    f = fit_activation_curve(t[order], y[order], "silu", drop_warmup=drop)
    assert f.dropped == drop and f.n_points == len(t) - drop
    assert f.d_range == pytest.approx((D_SYNTH[drop], D_SYNTH[-1]))
    np.testing.assert_allclose(f.mae, np.mean(np.abs(f.predict_tokens(t[drop:]) - y[drop:])))


@pytest.mark.parametrize("kwargs, match", [
    ({"tokens": [1e9, 2e9, 3e9, 4e9, 5e9], "ratio": [0.1] * 4}, "equal length"),
    ({"tokens": [1e9, 2e9, 3e9], "ratio": [0.1, 0.09, 0.08]}, "at least 4"),
    ({"tokens": [1e9, 2e9, 3e9, 4e9, 5e9], "ratio": [0.1, np.nan, 0.08, 0.07, 0.07]}, "NaN"),
    ({"tokens": [0, 2e9, 3e9, 4e9, 5e9], "ratio": [0.1, 0.09, 0.08, 0.07, 0.07]}, "positive"),
    ({"tokens": [1e9, 2e9, 3e9, 4e9, 5e9], "ratio": [10, 9, 8, 7, 7]}, "percentages"),
    ({"tokens": [1e9, 2e9, 3e9, 4e9, 5e9], "ratio": [0.1, 0.09, 0.08, 0.07, 0.07], "form": "gelu"}, "form"),
    ({"tokens": [1e9, 2e9, 3e9, 4e9, 5e9], "ratio": [0.1, 0.09, 0.08, 0.07, 0.07], "drop_warmup": 2}, "at least 4"),
    ({"tokens": [1e9, 2e9, 3e9, 4e9, 5e9], "ratio": [0.1, 0.09, 0.08, 0.07, 0.07], "drop_warmup": -1}, "non-negative"),
])
def test_bad_input_is_user_error(kwargs, match):
    kwargs = {"form": "relu", **kwargs}
    with pytest.raises(UserError, match=match):
        fit_activation_curve(kwargs.pop("tokens"), kwargs.pop("ratio"), **kwargs)


def test_figures(tmp_path, fits):
    from sparsity_jax.scaling.plots import plot_builtin

    paths = plot_builtin(str(tmp_path), fits)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["activation_vs_tokens.png", "derivative_vs_data_ratio.png"]
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
