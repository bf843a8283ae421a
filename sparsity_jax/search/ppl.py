"""PPL-p% sparsity (Sparsing Law §3.1, App. C Algorithm 1), with far fewer sparse passes.

Given checkpoints (params), validation batches and p: find the CETT c_p at which the
mean over checkpoints of exp(loss_sparse(c) − loss_dense) reaches 1 + p/100, where
loss_sparse(c) is the validation loss with every layer's threshold t_l(c) applied (the
exact per-layer thresholds of `thresholds.py`, from the dense model's activations).
`PplSearch` caches what is computed once; `find_crossing` is the search on c.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.search.thresholds import (
    Batch, CettThresholds, DenseCache, cache_thresholds, dense_pass, sparse_pass, threshold_sparsify,
)

_BETA_PRIOR = 2.5  # power-law exponent assumed with one point; the fit is shrunk towards it
_NOISE = 0.03  # relative noise of Z near the target, in the fit weights
_WALK = 3  # same-end moves in a row after which closing steps double


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


def _power_law_root(known: dict[float, float], z_target: float) -> float | None:
    """Root of the weighted least-squares power law log(Z/Z*) = a + β·log c (`find_crossing`)."""
    pts = [(math.log(c), math.log(z / z_target)) for c, z in known.items() if c > 0 and z > 0]
    if not pts:
        return None
    w = np.array([1.0 / (abs(y) + _NOISE) ** 2 for _, y in pts])
    x, y = np.array(pts).T
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    ridge = 1e-3 * w.sum()  # a pseudo-observation of β = prior, weight ≈ (Δ log c = 0.03)²
    beta = (np.sum(w * (x - mx) * (y - my)) + ridge * _BETA_PRIOR) / (np.sum(w * (x - mx) ** 2) + ridge)
    return float(math.exp(mx - my / float(np.clip(beta, 0.5, 6.0))))


def _propose(known: dict[float, float], z_target: float, lo: float, hi: float | None, est: float,
             moved: list[bool], tol: float) -> float:
    """Next c to evaluate given the bracket, the root estimate and which end each past
    evaluation moved (True: lo). See `find_crossing`."""
    if hi is None:
        return min(max(est * 1.02 + 0.5 * tol, lo + tol), 1.0)
    run = 0  # evaluations in a row that moved the same end
    while run < len(moved) and moved[-1 - run] == moved[-1]:
        run += 1
    step = 0.95 * tol * (2.0 ** (run - 1) if run >= _WALK else 1.0)
    if hi - lo <= 1.9 * tol:
        return min(max(est, hi - 0.95 * tol), lo + 0.95 * tol)
    if est <= lo + step:
        return lo + step
    if est >= hi - step:
        return hi - step
    if hi - lo > 4 * tol:
        return est
    last = next(reversed(known))
    return est + (0.45 * tol if last <= est else -0.45 * tol)


def find_crossing(
    evaluate: Callable[[float], float],
    z_target: float,
    *,
    tol: float = 1e-3,
    max_evaluations: int = 30,
    known: dict[float, float] | None = None,
    first_guess: float = 0.15,
) -> Crossing:
    """Bracket the crossing Z(c) = z_target in c ∈ [0, 1] to width ≤ tol.

    A host loop: each step is a full model pass over a batch list, not a small array op,
    so there is nothing to gain from a device loop. Let Z(c) = log(mean ratio) and
    Z* = log(1 + p/100). Z(0) = 0 is known without evaluation (c = 0 drops only exact
    zeros, which changes no output). The bracket [lo, hi] has Z(lo) ≤ Z* < Z(hi). Each
    step
      * estimates the root from a power law log Z = a + β·log c (Z grows like c^1.5…c^3
        in practice) fitted by weighted least squares to every evaluated point with
        Z > 0, weights 1/(|log(Z/Z*)| + 0.03)², so points near the target set the level
        and the spread of all points sets β (two-point secants let the noise between
        close points set β); β is shrunk slightly towards 2.5 and clipped to [0.5, 6];
        with no point yet the first guess 0.15·p^0.45;
      * approach (bracket wider than 4·tol): evaluates the estimate itself; no upper end
        yet: 2% + tol/2 past it;
      * closing: an estimate within 0.95·tol of a bracket end proposes that end
        ± 0.95·tol (finishes if that point lands on the other side), a bracket ≤ 1.9·tol
        is split so both parts are ≤ 0.95·tol (always finishes), otherwise the estimate
        ± 0.45·tol away from the last point; after three moves of the same end in a row
        the ± 0.95·tol step grows to 4× and then doubles with every further such move
        (the estimate is biased: walk faster);
      * bisects instead when the proposal leaves the bracket, repeats a point, or a wide
        bracket has not halved in two steps (exact bisection fallback).
    Points evaluated for one p serve the others (a shared cache of Z by c, `known`). It
    stops when hi − lo ≤ tol, and returns c_p = lo: the largest evaluated CETT with mean
    ratio ≤ 1+p%, with hi (ratio > 1+p%) at most tol above it — the acceptance band: both
    ratios are measured, ratio(lo) ≤ 1 + p/100 < ratio(hi), hi − lo ≤ tol.

    Args:
      evaluate: c -> Z(c) (one sparse evaluation).
      z_target: Z*, > 0.
      known: cache of evaluated points, updated in place; Z(0) = 0 is added.
      first_guess: the c evaluated first when no point with Z > 0 is known.
    """
    known = {0.0: 0.0} if known is None else known
    known.setdefault(0.0, 0.0)
    n, widths, moved = 0, [], []
    while True:
        lo, hi = _bracket(known, z_target)
        if (hi is not None and hi - lo <= tol) or (hi is None and lo >= 1.0):
            return Crossing(lo, hi, n, True)
        if n >= max_evaluations:
            return Crossing(lo, hi, n, False)
        est = _power_law_root(known, z_target)
        if est is None:
            est = first_guess if lo == 0 else 2 * lo
        c = _propose(known, z_target, lo, hi, est, moved, tol)
        if hi is not None:
            width = hi - lo
            walking = len(moved) >= _WALK and len(set(moved[-_WALK:])) == 1
            stalled = len(widths) >= 2 and width > 0.5 * widths[-2] and width > 4 * tol and not walking
            if stalled or not lo < c < hi or c in known:
                c = 0.5 * (lo + hi)
            widths.append(width)
        c = float(c)
        known[c] = float(evaluate(c))
        moved.append(known[c] <= z_target)
        n += 1


class CheckpointPoint(NamedTuple):
    """One checkpoint at one CETT: thresholds from its dense pass and its sparse pass."""

    thresholds: CettThresholds  # fields (L,)
    loss: float  # sparse validation loss
    ratio: float  # exp(loss − dense loss)
    activation_ratio: np.ndarray  # (L,) measured from the sparse pass's recorded mask


class PplResult(NamedTuple):
    p: float
    target_cett: float  # CETT_p (the feasible bracket end)
    target_cett_upper: float | None  # evaluated CETT above it with ratio > 1 + p/100 (≤ tol away)
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

    What is computed once: per checkpoint, the dense pass (`DenseCache`: the threshold
    search's set-up — dense-output norms, proxy curves — its scores cached on the mesh or
    recomputed per pass, and the dense loss). Each search step ("sparse evaluation") is
    then, per checkpoint, one prepared threshold search (a few truncated products; in
    stream mode each one a dense forward pass) and ONE sparse forward pass of the
    validation set. The reference instead recomputes the dense pass and a 16-step
    threshold bisection at every step of a 10-step bisection on c.

    `mesh`, `mode`, `dtype`, `memory_budget`: as in `thresholds.dense_pass`; "auto"
    decides once for all checkpoints (their caches are held together). `.mode` says
    which mode ran.
    """

    def __init__(self, graphdef, params_list: Sequence, batches: Sequence[Batch], *,
                 caches: Sequence[DenseCache] | None = None, log: Callable[[str], None] | None = None,
                 mesh=None, mode: str = "auto", dtype=jnp.float32, memory_budget: int | None = None):
        if not params_list:
            raise UserError("Pass at least one checkpoint to the PPL-p% search.")
        self.graphdef, self.params_list, self.batches = graphdef, list(params_list), list(batches)
        if caches is None:
            caches = [dense_pass(graphdef, p, batches, mesh=mesh, mode=mode, dtype=dtype,
                                 memory_budget=memory_budget, caches=len(self.params_list)) for p in params_list]
        self.caches: list[DenseCache | None] = list(caches)
        self.mode = self.caches[0].mode
        self.points: dict[float, list[CheckpointPoint]] = {}
        self.log = log or (lambda msg: None)

    @property
    def prepared(self) -> list:
        """Each checkpoint's threshold-search set-up (None once released)."""
        return [None if c is None else c.prepared for c in self.caches]

    def release(self, i: int) -> DenseCache:
        """Hands checkpoint i's dense pass over and drops it here (later `point` calls on
        new CETTs then fail for it); the sweep holds one checkpoint's cache at a time."""
        cache, self.caches[i], self.params_list[i] = self.caches[i], None, None
        return cache

    def point(self, c: float) -> list[CheckpointPoint]:
        """Per-checkpoint thresholds and sparse pass at CETT c (cached)."""
        if c not in self.points:
            pts = []
            for params, cache in zip(self.params_list, self.caches):
                if cache is None:
                    raise UserError("This PPL-p% search released its dense passes; create a new PplSearch.")
                thr = cache_thresholds(cache, c)
                ev = sparse_pass(self.graphdef, params, self.batches, threshold_sparsify(thr.threshold))
                pts.append(CheckpointPoint(thr, ev.loss, math.exp(ev.loss - cache.loss), ev.activation_ratio))
            self.points[c] = pts
            self.log(f"  CETT {c:.5f}: PPL ratio {self.mean_ratio(c):.5f}, "
                     f"sparsity {np.mean([p.thresholds.sparsity for p in pts]):.4f}")
        return self.points[c]

    def mean_ratio(self, c: float) -> float:
        if c == 0.0 and c not in self.points:
            return 1.0
        return float(np.mean([p.ratio for p in self.point(c)]))

    def search(self, p: float, tol: float = 1e-3, max_evaluations: int = 30) -> PplResult:
        """CETT_p for one p > 0 (percent), bracketed to `tol` (`find_crossing`)."""
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
    """CETT tried first for PPL-p% when nothing is known: 0.15·p^0.45 (ReLU² §5.1 finds
    PPL flat up to CETT ≈ 0.2; trained tiny models give CETT_p 0.115–0.13 / 0.22–0.31 /
    0.29–0.43 for p = 1 / 5 / 10)."""
    return float(min(0.15 * p**0.45, 0.9))


def check_p(p) -> None:
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p > 0):
        raise UserError(f"Pass p as a positive percentage (e.g. 1 for PPL-1%); got {p!r}.")


def ppl_p_sparsity(graphdef, params_list: Sequence, batches: Sequence[Batch], p: float | Sequence[float],
                   *, tol: float = 1e-3, **dense) -> list[PplResult]:
    """PPL-p% search for one or several p over the given checkpoints jointly; `dense`:
    mesh, mode, dtype, memory_budget of `PplSearch`."""
    ps = [p] if isinstance(p, (int, float)) else list(p)
    for q in ps:
        check_p(q)
    search = PplSearch(graphdef, params_list, batches, **dense)
    return [search.search(q, tol) for q in ps]
