"""Fits of the activation ratio against training data (Sparsing Law §4.2, Eqs. 4–5,
App. D, Table 2): ReLU `A(D) = exp(−c·D^α + b) + A0`, SiLU `A(D) = −c / D^α + A0`, with
D = training tokens / 1e9. Bounded trust-region least squares from a multi-start grid
derived only from the data; Table 2 is kept for comparison and never used as a start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Mapping

import numpy as np
from scipy.optimize import least_squares

from sparsity_jax.errors import UserError

TOKENS_PER_D = 1e9  # App. D: tokens are divided by 1e9 before fitting
FORMS = ("relu", "silu")
PARAM_NAMES = {"relu": ("alpha", "b", "c", "A0"), "silu": ("alpha", "c", "A0")}
# Bounds: α, c > 0 (Eqs. 4–5); A0 is a ratio in [0, 1]; |b| ≤ 50 keeps exp(b) finite.
_BOUNDS = {"relu": ([1e-3, -50.0, 1e-12, 0.0], [10.0, 50.0, np.inf, 1.0]),
           "silu": ([1e-3, 1e-12, 0.0], [10.0, np.inf, 1.0])}
_ALPHA_GRID = np.geomspace(0.03, 3.0, 12)
_N_REFINE = 6  # best grid starts refined by least squares

# Sparsing Law (Luo et al. 2024) App. D, Table 2, as transcribed in shared/PAPERS.md. The
# paper has no row for the 2.4B ReLU curve of its data release. Comparison only.
TABLE2: dict[str, dict[str, float]] = {
    "0.1b_relu": {"alpha": 0.101, "b": -0.0151, "c": 3.20, "A0": 0.0614},
    "0.2b_relu": {"alpha": 0.449, "b": -3.05, "c": 0.286, "A0": 0.0674},
    "0.4b_relu": {"alpha": 0.683, "b": -3.46, "c": 0.0790, "A0": 0.0690},
    "0.8b_relu": {"alpha": 1.01, "b": -3.49, "c": 0.00797, "A0": 0.0721},
    "1.2b_relu": {"alpha": 1.33, "b": -3.89, "c": 0.000903, "A0": 0.0782},
    "0.1b_silu": {"alpha": 0.479, "c": 0.102, "A0": 0.409},
    "0.2b_silu": {"alpha": 0.844, "c": 0.208, "A0": 0.390},
    "0.4b_silu": {"alpha": 1.03, "c": 0.420, "A0": 0.385},
    "0.8b_silu": {"alpha": 0.995, "c": 0.562, "A0": 0.383},
    "1.2b_silu": {"alpha": 0.967, "c": 0.538, "A0": 0.382},
}
# Sparsing Law App. F, Table 3: non-embedding parameters per scale (none for 2.4B).
NON_EMBEDDING_PARAMS: dict[str, float] = {"0.1b": 1.08e8, "0.2b": 2.41e8, "0.4b": 4.52e8,
                                          "0.8b": 7.60e8, "1.2b": 1.18e9}


def law(form: str, D: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """Activation ratio at D = tokens / 1e9 (Sparsing Law Eq. 4 for "relu", Eq. 5 for
    "silu"); `params` holds alpha, c, A0 and, for relu, b."""
    D = np.asarray(D, dtype=float)
    if form == "relu":
        return np.exp(-params["c"] * D ** params["alpha"] + params["b"]) + params["A0"]
    return -params["c"] / D ** params["alpha"] + params["A0"]


def law_derivative(form: str, D: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """dA/dD of `law` (per 1e9 tokens), analytic."""
    D = np.asarray(D, dtype=float)
    a, c = params["alpha"], params["c"]
    if form == "relu":
        return -c * a * D ** (a - 1) * np.exp(-c * D ** a + params["b"])
    return c * a * D ** (-a - 1)


@dataclass(frozen=True)
class CurveFit:
    """One fitted curve. `params`/`stderr` are keyed by PARAM_NAMES[form]; stderr is
    sqrt(diag((JᵀJ)⁻¹·s²)), s² = SSR/(n−p), inf where the Jacobian is rank-deficient or
    n ≤ p. `mae`/`mse` are on the `n_points` fitted points (after dropping `dropped`
    warm-up points), whose D (tokens / 1e9) spans `d_range`; `aic` = n·log(SSR/n) + 2p;
    `aics` holds every form tried."""

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    mae: float
    mse: float
    n_points: int
    dropped: int
    d_range: tuple[float, float]
    aic: float
    aics: dict[str, float]

    def predict(self, D: np.ndarray) -> np.ndarray:
        """Activation ratio at D = tokens / 1e9."""
        return law(self.form, D, self.params)

    def predict_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Activation ratio at a number of training tokens."""
        return self.predict(np.asarray(tokens, dtype=float) / TOKENS_PER_D)

    def derivative(self, D: np.ndarray) -> np.ndarray:
        """dA/dD at D = tokens / 1e9 (per 1e9 tokens), analytic."""
        return law_derivative(self.form, D, self.params)

    @property
    def limit(self) -> float:
        """A0, the limit activation ratio as D → ∞ (Sparsing Law §4.2)."""
        return self.params["A0"]


def _jacobian(form: str, x: np.ndarray, D: np.ndarray) -> np.ndarray:
    """d(law)/d(params) as an (n, p) matrix, columns in PARAM_NAMES[form] order."""
    logD = np.log(D)
    if form == "relu":
        a, b, c, _ = x
        Da = D ** a
        e = np.exp(-c * Da + b)
        return np.stack([-e * c * Da * logD, e, -e * Da, np.ones_like(D)], axis=1)
    a, c, _ = x
    Dm = D ** -a
    return np.stack([c * Dm * logD, -Dm, np.ones_like(D)], axis=1)


def _grid_starts(form: str, D: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Starting points from the data alone: for each α on a log grid (and, for relu, A0
    just below the curve's minimum), the remaining parameters by linear least squares
    (relu: log(y − A0) = b − c·D^α; silu: y = A0 − c·D^−α); best few by SSR."""
    lo, span = float(y.min()), float(np.ptp(y)) or 1e-3
    lower, upper = _BOUNDS[form]
    starts = []
    for a in _ALPHA_GRID:
        Da = D ** a
        if form == "relu":
            for A0 in lo - span * np.array([0.02, 0.1, 0.3, 1.0]):  # clipped into bounds below
                (b, c), *_ = np.linalg.lstsq(np.stack([np.ones_like(D), -Da], 1), np.log(y - A0), rcond=None)
                starts.append(np.array([a, b, c, A0]))
        else:
            (A0, c), *_ = np.linalg.lstsq(np.stack([np.ones_like(D), -1.0 / Da], 1), y, rcond=None)
            starts.append(np.array([a, c, A0]))
    starts = [np.clip(s, np.array(lower) + 1e-9, np.array(upper) - 1e-9) for s in starts]
    ssr = [float(np.sum((law(form, D, dict(zip(PARAM_NAMES[form], s))) - y) ** 2)) for s in starts]
    return [starts[i] for i in np.argsort(ssr)[:_N_REFINE]]


def _stderr(jac: np.ndarray, ssr: float) -> np.ndarray:
    """sqrt(diag((JᵀJ)⁻¹·s²)), s² = SSR/(n−p); inf when rank-deficient or n ≤ p."""
    n, p = jac.shape
    _, sv, vt = np.linalg.svd(jac, full_matrices=False)
    if n <= p or sv[-1] <= np.finfo(float).eps * max(jac.shape) * sv[0]:
        return np.full(p, np.inf)
    cov = (vt.T / sv**2) @ vt * (ssr / (n - p))
    return np.sqrt(np.diag(cov))


def _fit_form(form: str, D: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Best (params, stderr, SSR) over the refined multi-start for one form."""
    best = None
    for x0 in _grid_starts(form, D, y):
        res = least_squares(lambda x: law(form, D, dict(zip(PARAM_NAMES[form], x))) - y, x0,
                            jac=lambda x: _jacobian(form, x, D), bounds=_BOUNDS[form],
                            method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)
        ssr = float(np.sum(res.fun**2))
        if np.isfinite(ssr) and (best is None or ssr < best[2]):
            best = (res.x, res.jac, ssr)
    x, jac, ssr = best
    return x, _stderr(jac, ssr), ssr


def _aic(ssr: float, n: int, p: int) -> float:
    return n * float(np.log(max(ssr, 1e-300) / n)) + 2 * p


def _validate(tokens, ratio, form: str, drop_warmup: int) -> tuple[np.ndarray, np.ndarray]:
    if form not in (*FORMS, "auto"):
        raise UserError(f"Pass form as one of relu, silu, auto; got {form!r}.")
    try:
        t, y = np.asarray(tokens, dtype=float), np.asarray(ratio, dtype=float)
    except (TypeError, ValueError):
        raise UserError("Pass tokens and activation ratios as sequences of numbers.") from None
    if t.ndim != 1 or t.shape != y.shape:
        raise UserError("Pass tokens and activation ratios as 1-D sequences of equal length; "
                        f"got shapes {t.shape} and {y.shape}.")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
        raise UserError("Remove the NaN/inf values from the tokens and activation ratios before fitting.")
    if np.any((y < 0) | (y > 1)):
        raise UserError("Pass activation ratios as fractions in [0, 1], not percentages.")
    if np.any(t <= 0):
        raise UserError("Pass positive token counts (the fit uses D = tokens / 1e9 raised to a power).")
    if isinstance(drop_warmup, bool) or not isinstance(drop_warmup, (int, np.integer)) or drop_warmup < 0:
        raise UserError(f"Pass drop_warmup as a non-negative number of leading points; got {drop_warmup!r}.")
    if len(t) - drop_warmup < 4:
        raise UserError(f"Pass at least 4 points after dropping {drop_warmup} warm-up points; got {len(t)} in all.")
    order = np.argsort(t, kind="stable")
    return t[order][drop_warmup:], y[order][drop_warmup:]


def fit_activation_curve(tokens, ratio, form: str = "auto", *, drop_warmup: int = 0) -> CurveFit:
    """Fits Sparsing Law Eq. 4 ("relu") or Eq. 5 ("silu") to an activation-ratio curve
    (App. D: least squares on D = tokens / 1e9); "auto" fits both and keeps the lower AIC.

    tokens: training tokens at each point (raw count, > 0); ratio: activation ratio at each
    point (fraction of neurons active, 1 − sparsity). drop_warmup: how many points with the
    fewest tokens to leave out (default 0). Bad input raises UserError.
    """
    t, y = _validate(tokens, ratio, form, drop_warmup)
    D, n = t / TOKENS_PER_D, len(t)
    fits = {}
    for f in FORMS if form == "auto" else (form,):
        x, se, ssr = _fit_form(f, D, y)
        fits[f] = (x, se, ssr, _aic(ssr, n, len(x)))
    aics = {f: v[3] for f, v in fits.items()}
    best = min(aics, key=aics.get)
    x, se, ssr, aic = fits[best]
    names = PARAM_NAMES[best]
    resid = law(best, D, dict(zip(names, x))) - y
    return CurveFit(form=best, params={k: float(v) for k, v in zip(names, x)},
                    stderr={k: float(v) for k, v in zip(names, se)}, mae=float(np.mean(np.abs(resid))),
                    mse=float(np.mean(resid**2)), n_points=n, dropped=drop_warmup,
                    d_range=(float(D[0]), float(D[-1])), aic=aic, aics=aics)


def derivative_vs_data_ratio(fits: Mapping[str, CurveFit], n_params: Mapping[str, float],
                             ratios: np.ndarray) -> dict[str, np.ndarray]:
    """dA/d(ratio) on a grid of data-scale ratios (training tokens / non-embedding
    parameters), per model (Sparsing Law §5, the derivative figure): with N a model's
    non-embedding parameters, D = ratio·N/1e9 and dA/d(ratio) = dA/dD · N/1e9."""
    missing = sorted(set(fits) - set(n_params))
    if missing:
        raise UserError(f"Pass the non-embedding parameter count for {', '.join(missing)}.")
    r = np.asarray(ratios, dtype=float)
    if r.ndim != 1 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise UserError("Pass the data-scale ratios as a 1-D sequence of positive numbers.")
    return {name: fit.derivative(r * n_params[name] / TOKENS_PER_D) * n_params[name] / TOKENS_PER_D
            for name, fit in fits.items()}


def builtin_n_params(names) -> dict[str, float]:
    """Non-embedding parameters (Table 3) for the builtin curve names that have them."""
    return {n: NON_EMBEDDING_PARAMS[n.split("_")[0]] for n in names if n.split("_")[0] in NON_EMBEDDING_PARAMS}


def load_builtin() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 11 shipped curves (SparsingLawData): {"0.1b_relu": (tokens, activation ratio)}."""
    curves = {}
    for entry in sorted(resources.files(__package__).joinpath("data").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            d = json.loads(entry.read_text())
            curves[entry.name[:-5]] = (np.asarray(d["token_passed"], float), np.asarray(d["activation_ratio"], float))
    return curves


def fit_builtin(drop_warmup: int = 0) -> dict[str, CurveFit]:
    """Fits every shipped curve with the form named in its file name."""
    return {name: fit_activation_curve(t, y, name.rsplit("_", 1)[1], drop_warmup=drop_warmup)
            for name, (t, y) in load_builtin().items()}


def builtin_table(fits: Mapping[str, CurveFit] | None = None) -> list[dict]:
    """One row per shipped curve: our fit next to Table 2's, both scored (MAE) on the same
    points. Keys: name, form, n_points, params, mae, mse, A0_stderr, paper_params,
    paper_mae, paper_mse (the last three None where Table 2 has no row)."""
    fits = fit_builtin() if fits is None else fits
    rows = []
    for name, (t, y) in load_builtin().items():
        f = fits[name]
        D, paper = t[f.dropped:] / TOKENS_PER_D, TABLE2.get(name)
        resid = None if paper is None else law(f.form, D, paper) - y[f.dropped:]
        rows.append({"name": name, "form": f.form, "n_points": f.n_points, "params": f.params, "mae": f.mae,
                     "mse": f.mse, "A0_stderr": f.stderr["A0"], "paper_params": paper,
                     "paper_mae": None if paper is None else float(np.mean(np.abs(resid))),
                     "paper_mse": None if paper is None else float(np.mean(resid**2))})
    return rows


def _b(params: Mapping[str, float]) -> str:
    return f"{params['b']:.3f}" if "b" in params else "-"


def format_table(rows: list[dict]) -> str:
    """`builtin_table` rows as a fixed-width text table; A0 (± stderr) and MAE in percent
    (activation ratio × 100)."""
    head = f"{'curve':10} {'n':>3} {'alpha':>7} {'b':>8} {'c':>9} {'A0 %':>14} {'MAE %':>6} | " \
           f"{'T2 alpha':>8} {'T2 b':>7} {'T2 c':>9} {'T2 A0 %':>7} {'T2 MAE %':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p, q = r["params"], r["paper_params"]
        ours = f"{p['alpha']:7.3f} {_b(p):>8} {p['c']:9.3g} " \
               f"{100 * p['A0']:7.2f}±{100 * r['A0_stderr']:<6.2f} {100 * r['mae']:6.3f}"
        theirs = "   (no Table 2 row)" if q is None else \
            f"{q['alpha']:8.3f} {_b(q):>7} {q['c']:9.3g} {100 * q['A0']:7.2f} {100 * r['paper_mae']:8.3f}"
        lines.append(f"{r['name']:10} {r['n_points']:3d} {ours} | {theirs}")
    return "\n".join(lines)
