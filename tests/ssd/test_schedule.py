"""SSD switching controller (SSD §4.2, App. C)."""
import pytest

from sparsity_jax.errors import UserError
from tests.train.helpers import tiny_config
from sparsity_jax.ssd.schedule import SwitchConfig, decide, initial_state, is_monitor_step, simulate, sparse_fraction


def test_paper_app_c_example():
    """τ first exceeded after 18,000 dense steps → 22,500 sparse steps (proportion 1.25);
    the next dense phase of 6,000 steps → 7,500 sparse steps."""
    cfg = SwitchConfig(total_steps=100_000, monitor_every=3000, ari_threshold=0.9, sparse_share=0.5,
                       final_dense_share=0.1)
    assert cfg.proportion == pytest.approx(1.25)
    stable_from = {18_000, 46_500}
    phases = simulate(cfg, lambda step: 0.95 if step in stable_from else 0.5)
    assert phases[:4] == [["dense", 0, 18_000], ["sparse", 18_000, 40_500], ["dense", 40_500, 46_500],
                          ["sparse", 46_500, 54_000]]
    assert phases[-1] == ["dense", 54_000, 100_000]


def test_always_stable_reaches_the_sparse_share_and_ends_dense():
    cfg = SwitchConfig(total_steps=10_000, monitor_every=100)
    phases = simulate(cfg, lambda step: 1.0)
    assert phases[-1][0] == "dense" and phases[-1][1] <= cfg.final_dense_start
    assert all(end <= cfg.final_dense_start for kind, _, end in phases if kind == "sparse")
    assert 0.45 <= sparse_fraction(phases) <= 0.5  # ≈ r, capped by the final dense share
    # never sparse without a previous clustering: the first dense phase has ≥ 2 monitor periods
    assert phases[0] == ["dense", 0, 200]


def test_never_stable_stays_dense_and_monitor_steps():
    cfg = SwitchConfig(total_steps=1000, monitor_every=100)
    assert simulate(cfg, lambda step: 0.2) == [["dense", 0, 1000]]
    state = initial_state()
    assert [s for s in range(1, 1001) if is_monitor_step(cfg, state, s)] == list(range(100, 900, 100))


def test_resume_mid_sparse_phase_is_the_same_schedule():
    cfg = SwitchConfig(total_steps=2000, monitor_every=100)
    state = initial_state()
    for step in range(1, 2001):
        ari = 0.95 if is_monitor_step(cfg, state, step) and step > 100 else None
        state, _ = decide(cfg, state, step, ari)
        if step == 450:
            import json

            saved = json.loads(json.dumps(state))  # what the checkpoint metadata holds
    resumed = saved
    for step in range(451, 2001):
        ari = 0.95 if is_monitor_step(cfg, resumed, step) and step > 100 else None
        resumed, _ = decide(cfg, resumed, step, ari)
    assert resumed == state


def test_bad_shares():
    with pytest.raises(UserError, match=r"r \+ l < 1"):  # the run's settings check the shares
        tiny_config(**{"method.name": "ssd", "method.sparse_share": 0.95, "method.final_dense_share": 0.1})
