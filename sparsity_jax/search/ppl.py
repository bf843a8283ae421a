"""PPL-p% sparsity (Sparsing Law §3.1, App. C Algorithm 1), with far fewer sparse passes.

Given checkpoints (params), validation batches and p: find the CETT c_p at which the
mean over checkpoints of exp(loss_sparse(c) − loss_dense) reaches 1 + p/100, where
loss_sparse(c) is the validation loss with every layer's threshold t_l(c) applied (the
exact per-layer thresholds of `thresholds.py`, from the dense model's activations).

What is computed once: per checkpoint, the dense pass (`DenseCache`: real-token scores,
kernels, dense loss). Each search step ("sparse evaluation") is then, per checkpoint, one
`find_threshold` call on the cached scores (a few truncated products, no forward pass)
and ONE sparse forward pass of the validation set. The reference instead recomputes the
dense pass and a 16-step threshold bisection at every step of a 10-step bisection on c.

Search on c (host loop: each step is a full model pass over a batch list, not a small
array op, so there is nothing to gain from a device loop). Let Z(c) = log(mean ratio)
and Z* = log(1 + p/100). Z(0) = 0 is known without evaluation (c = 0 drops only exact
zeros, which changes no output). The bracket [lo, hi] has Z(lo) ≤ Z* < Z(hi); each step
  * estimates the root from a power law Z ≈ A·c^β through two evaluated points with
    Z > 0 (log-log secant; Z grows like c^1…c^3 in practice): inside a bracket the two
    nearest Z*, before one (extrapolating) the nearest and the farthest in log c, so
    noise between close points does not set β; with one point β = 2; with none, the
    first guess 0.2·p^0.3; else linear interpolation of Z between the bracket ends;
  * proposes the estimate pushed past itself by max(0.45·tol, 0.3 × the last change of
    the estimate), towards the end that did not move last, so the bracket closes from
    both sides (two proposals 0.9·tol apart finish it once the estimate is good);
  * bisects instead when the proposal leaves the bracket, repeats a point, or the
    bracket has not halved in two steps (exact bisection fallback).
Points evaluated for one p serve the others (a shared cache of Z by c). It stops when
hi − lo ≤ tol, and returns c_p = lo: the largest evaluated CETT with mean ratio ≤ 1+p%,
with hi (ratio > 1+p%) at most tol above it — the acceptance band: both ratios are
measured, ratio(lo) ≤ 1 + p/100 < ratio(hi), hi − lo ≤ tol.
Evaluations: 4–6 on smooth synthetic curves (tests); on tiny trained models 4–9,
because Z(c) is a noisy, locally non-monotone staircase at the 1e-3 scale (fewer
validation tokens: noisier); the reference always takes 10.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.search.thresholds import (
    Batch, CettThresholds, DenseCache, cache_thresholds, dense_pass, sparse_pass, threshold_sparsify,
)

_ERR_FACTOR = 0.3  # error of the current root estimate / the last change of the estimate
_BETA_PRIOR = 2.0  # power-law exponent assumed when only one point with Z > 0 is known


class Crossing(NamedTuple):
    lo: float  # largest evaluated c with Z(c) <= Z*
    hi: float | None  # smallest evaluated c above lo with Z(c) > Z*; None if none
    evaluations: int  # new evaluations spent by this search
    converged: bool


def _bracket(known: dict[float, float], z_target: float) -> tuple[float, float | None]:
    above = [c for c, z in known.items() if z > z_target]
    hi = min(above) if above else None
    lo = max(c for c, z in known.items() if z <= z_target and (hi is None or c < hi))
    return lo, hi


def _power_law_root(points: list[tuple[float, float]], z_target: float, spread: bool) -> float | None:
    """Root of A·c^β = z_target through two points with c, Z > 0 (log-log secant).

    The first point is the one nearest z_target; the second the next nearest, or with
    `spread` (extrapolating, no bracket yet) the one farthest from it in log c, so that
    noise between close points does not set β. With one point, β = _BETA_PRIOR.
    """
    pos = sorted((p for p in points if p[0] > 0 and p[1] > 0), key=lambda p: abs(math.log(p[1] / z_target)))
    if not pos:
        return None
    if len(pos) == 1:
        (c1, z1), beta = pos[0], _BETA_PRIOR
    else:
        c1, z1 = pos[0]
        c2, z2 = max(pos[1:], key=lambda p: abs(math.log(p[0] / c1))) if spread else pos[1]
        if c1 == c2 or z1 == z2:
            return None
        beta = math.log(z2 / z1) / math.log(c2 / c1)
        if not 0.25 <= beta <= 8:
            return None
    return c1 * (z_target / z1) ** (1.0 / beta)


def find_crossing(
    evaluate: Callable[[float], float],
    z_target: float,
    *,
    tol: float = 1e-3,
    max_evaluations: int = 30,
    known: dict[float, float] | None = None,
    first_guess: float = 0.2,
) -> Crossing:
    """Bracket the crossing Z(c) = z_target in c ∈ [0, 1] to width ≤ tol (module doc).

    Args:
      evaluate: c -> Z(c) (one sparse evaluation).
      z_target: Z*, > 0.
      known: cache of evaluated points, updated in place; Z(0) = 0 is added.
      first_guess: the c evaluated first when no point with Z > 0 is known.
    """
    known = {0.0: 0.0} if known is None else known
    known.setdefault(0.0, 0.0)
    n, est_prev, went_up, widths = 0, None, None, []
    while True:
        lo, hi = _bracket(known, z_target)
        if (hi is not None and hi - lo <= tol) or (hi is None and lo >= 1.0):
            return Crossing(lo, hi, n, True)
        if n >= max_evaluations:
            return Crossing(lo, hi, n, False)
        top = 1.0 if hi is None else hi
        width = top - lo
        est = _power_law_root(list(known.items()), z_target, spread=hi is None)
        if est is None and hi is not None and known[lo] < known[hi]:
            est = lo + width * (z_target - known[lo]) / (known[hi] - known[lo])
        if est is None:
            est = first_guess if lo == 0 else 2 * lo
        if hi is None:  # only feasible points: aim past the estimate to get a bracket
            c = est if lo == 0 else est + max(tol, 0.1 * (est - lo))
            c = min(max(c, lo + tol), 1.0)
        else:
            # Push past the estimate by its estimated error, towards the end that did not
            # move last (the first time: towards the farther end).
            err = 0.1 * width if est_prev is None else _ERR_FACTOR * abs(est - est_prev)
            up = (est - lo < top - est) if went_up is None else went_up
            c = est + max(0.45 * tol, err) * (1 if up else -1)
            stalled = len(widths) >= 2 and width > 0.5 * widths[-2]
            if stalled or not lo < c < hi or c in known:
                c = 0.5 * (lo + hi)
            widths.append(width)
        c = float(c)
        known[c] = float(evaluate(c))
        went_up, est_prev, n = known[c] <= z_target, est, n + 1


class CheckpointPoint(NamedTuple):
    """One checkpoint at one CETT: thresholds from its dense pass and its sparse pass."""

    thresholds: CettThresholds  # fields (L,)
    loss: float  # sparse validation loss
    ratio: float  # exp(loss − dense loss)
    act_ratio: np.ndarray  # (L,) measured from the sparse pass's recorded mask


class PplResult(NamedTuple):
    p: float
    cett: float  # CETT_p (the feasible bracket end)
    cett_upper: float | None  # evaluated CETT above it with ratio > 1 + p/100 (≤ tol away)
    ratio: float  # mean PPL ratio over the checkpoints at CETT_p
    ratio_upper: float | None
    threshold: np.ndarray  # (C, L) per checkpoint and layer
    sparsity: np.ndarray  # (C, L) from the dense activations (the paper's definition)
    overall_sparsity: float  # mean over checkpoints and layers (layers share F and N)
    evaluations: int  # sparse evaluations spent on this p (each: one pass per checkpoint)
    converged: bool


class PplSearch:
    """PPL-p% search over a set of checkpoints sharing validation batches.

    The dense pass of each checkpoint runs once, in the constructor; `point(c)` caches
    every evaluated CETT, so several p values share evaluations.
    """

    def __init__(self, graphdef, params_list: Sequence, batches: Sequence[Batch], *,
                 caches: Sequence[DenseCache] | None = None, log: Callable[[str], None] | None = None):
        if not params_list:
            raise UserError("Pass at least one checkpoint to the PPL-p% search.")
        self.graphdef, self.params_list, self.batches = graphdef, list(params_list), list(batches)
        self.caches = list(caches) if caches is not None else [dense_pass(graphdef, p, batches) for p in params_list]
        self.points: dict[float, list[CheckpointPoint]] = {}
        self.log = log or (lambda msg: None)

    def point(self, c: float) -> list[CheckpointPoint]:
        """Per-checkpoint thresholds and sparse pass at CETT c (cached)."""
        if c not in self.points:
            pts = []
            for params, cache in zip(self.params_list, self.caches):
                thr = cache_thresholds(cache, c)
                ev = sparse_pass(self.graphdef, params, self.batches, threshold_sparsify(thr.threshold))
                pts.append(CheckpointPoint(thr, ev.loss, math.exp(ev.loss - cache.loss), ev.act_ratio))
            self.points[c] = pts
            self.log(f"  CETT {c:.5f}: PPL ratio {self.mean_ratio(c):.5f}, "
                     f"sparsity {np.mean([p.thresholds.sparsity for p in pts]):.4f}")
        return self.points[c]

    def mean_ratio(self, c: float) -> float:
        if c == 0.0 and c not in self.points:
            return 1.0
        return float(np.mean([p.ratio for p in self.point(c)]))

    def search(self, p: float, tol: float = 1e-3, max_evaluations: int = 30) -> PplResult:
        """CETT_p for one p > 0 (percent), bracketed to `tol` (module docstring)."""
        check_p(p)
        known = {c: math.log(self.mean_ratio(c)) for c in self.points}
        cross = find_crossing(lambda c: math.log(self.mean_ratio(c)), math.log1p(p / 100), tol=tol,
                              max_evaluations=max_evaluations, known=known, first_guess=first_guess(p))
        pts = self.point(cross.lo)
        thr = np.stack([q.thresholds.threshold for q in pts])
        sp = np.stack([q.thresholds.sparsity for q in pts])
        upper = None if cross.hi is None else self.mean_ratio(cross.hi)
        return PplResult(float(p), cross.lo, cross.hi, self.mean_ratio(cross.lo), upper, thr, sp,
                         float(sp.mean()), cross.evaluations, cross.converged)


def first_guess(p: float) -> float:
    """CETT tried first for PPL-p% when nothing is known: 0.2·p^0.3 (0.2 for p = 1; ReLU²
    §5.1 finds PPL flat up to CETT ≈ 0.2; the tiny test models give 0.19 / 0.38 / 0.49
    for p = 1 / 5 / 10)."""
    return float(min(0.2 * p**0.3, 0.9))


def check_p(p) -> None:
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p > 0):
        raise UserError(f"Pass p as a positive percentage (e.g. 1 for PPL-1%); got {p!r}.")


def ppl_p_sparsity(graphdef, params_list: Sequence, batches: Sequence[Batch], p: float | Sequence[float],
                   *, tol: float = 1e-3) -> list[PplResult]:
    """PPL-p% search for one or several p over the given checkpoints jointly."""
    ps = [p] if isinstance(p, (int, float)) else list(p)
    for q in ps:
        check_p(q)
    search = PplSearch(graphdef, params_list, batches)
    return [search.search(q, tol) for q in ps]
