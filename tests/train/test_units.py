"""Hidden-unit metrics in training, turn-on/off state and dead-unit masking (W&A §2–4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsity_jax.methods import Variant, make_method
from sparsity_jax.methods.units import UnitConfig, init_units, sparsify_for, update_units
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.train.setup import build

from tests.train.helpers import synthetic_batch, tiny_config

VOCAB = 64


def test_masking_state_machine_by_hand():
    """Window of 2 batches before S = 3; the mask appears at the end of step 3 only."""
    u = UnitConfig(num_layers=1, d_ff=4, mask_at_step=3, mask_window=2)
    units, rng = init_units(u), jax.random.key_data(jax.random.key(0))
    batches = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    masks = []
    for step, used in enumerate(batches, start=1):
        units, stats = update_units(units, jnp.array([used], bool), jnp.int32(step), rng, u)
        masks.append(np.asarray(units["unit_mask"])[0].tolist())
    assert masks[0] == masks[1] == [1, 1, 1, 1]
    assert masks[2] == [0, 1, 1, 0]          # used in batches 2..3 (window 2 ending at S=3)
    assert masks[3] == [0, 1, 1, 0]          # kept for every later step
    np.testing.assert_allclose(np.asarray(stats["masked_fraction"]), [0.5])
    # tracking: first batch {0}; now {3}: turned on 1/4, turned off 1/4, ever all 4
    np.testing.assert_allclose(np.asarray(stats["turned_on"]), [0.25])
    np.testing.assert_allclose(np.asarray(stats["turned_off"]), [0.25])
    np.testing.assert_allclose(np.asarray(stats["ever_used"]), [1.0])


def few_token_batch(rng, real=3):
    """A batch with only `real` real tokens, so that a fresh model leaves units unused."""
    b = synthetic_batch(rng, 16, 32, VOCAB)
    b["loss_weights"][:] = 0.0
    b["loss_weights"][0, :real] = 1.0
    return b


def run_steps(cfg, steps, start_state=None, seed=0, make_batch=few_token_batch):
    run = build(cfg, VOCAB, make_method)
    state = run.init_state(jax.random.key(0)) if start_state is None else start_state
    rng = np.random.default_rng(seed)
    history = []
    for i in range(steps):
        batch = run.device_batch(make_batch(rng))
        state, m = run.train_step(state, batch, Sparsify(), Variant(detailed=True))
        history.append(jax.device_get(m))
    return run, state, history


@pytest.mark.parametrize("random", [False, True])
def test_masked_units_are_zero_forward_and_gradient(random, tmp_path):
    cfg = tiny_config(**{"unit_mask.at_step": 2, "unit_mask.random": random, "model.d_ff": 256,
                         "model.activation": "relu2", "optimizer.lr": 0.01})
    run, state, hist = run_steps(cfg, 4)
    mask_LxF = np.asarray(state["units"]["unit_mask"])
    masked = mask_LxF == 0
    assert masked.any() and (~masked).any()
    np.testing.assert_allclose(hist[-1]["masked_fraction"], masked.mean(-1), atol=1e-6)
    # forward: masked units never fire after S
    from flax import nnx

    toks = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (4, 32)))
    record = jax.jit(lambda p, t, m: nnx.merge(run.graphdef, p).apply(t, sparsify=Sparsify(unit_mask=m),
                                                                       record="mask")[1])
    rec = record(state["params"], toks, jnp.asarray(mask_LxF))
    for layer in range(2):
        assert not np.asarray(rec["mask"])[layer][..., masked[layer]].any()
    # gradient: masked units' W_in columns and W_out rows receive exactly zero gradient
    from sparsity_jax.runtime.forward import forward

    batch = run.device_batch(synthetic_batch(np.random.default_rng(9), 16, 32, VOCAB))
    sp = sparsify_for(state["units"], run.method.units, Sparsify())
    grads = jax.jit(jax.grad(lambda p: forward(run.graphdef, p, batch, sp, None)[0]["loss_sum"]))(state["params"])
    for layer in range(2):
        g_in = np.asarray(grads["blocks"][layer]["ffn"]["w_in"])
        g_out = np.asarray(grads["blocks"][layer]["ffn"]["w_out"])
        assert np.all(g_in[:, masked[layer]] == 0) and np.all(g_out[masked[layer]] == 0)
        assert np.abs(g_out[~masked[layer]]).max() > 0
    # the random control masks the same count per layer as the dead-unit rule would
    if random:
        cfg_dead = tiny_config(**{"unit_mask.at_step": 2, "model.d_ff": 256, "model.activation": "relu2",
                                  "optimizer.lr": 0.01})
        _, sd, _ = run_steps(cfg_dead, 2)
        np.testing.assert_array_equal((np.asarray(sd["units"]["unit_mask"]) == 0).sum(-1), masked.sum(-1))
        assert not np.array_equal(np.asarray(sd["units"]["unit_mask"]), mask_LxF)


def test_unit_state_survives_checkpoint_restore(tmp_path):
    cfg = tiny_config(**{"unit_mask.at_step": 2})
    run, state, _ = run_steps(cfg, 3)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(3, state, {"data_position": 3})
    ckpt.wait()
    restored, _ = ckpt.restore(3, run.abstract_state)
    for k in state["units"]:
        np.testing.assert_array_equal(np.asarray(restored["units"][k]), np.asarray(state["units"][k]))
    ckpt.close()


def test_detailed_metrics_in_train_step():
    cfg = tiny_config()
    _, _, hist = run_steps(cfg, 1, make_batch=lambda rng: synthetic_batch(rng, 16, 32, VOCAB))
    m = hist[0]
    d = m["detailed"]  # the "units" record
    for key in ("activation_ratio", "use_per_sequence", "use_per_batch", "turned_on", "ever_used"):
        assert d[key].shape == (2,), key
    assert d["seq_use_percentile"]["50"].shape == (2,)
    assert np.all(d["activation_ratio"] <= d["use_per_sequence"] + 1e-6)
    assert np.all(d["use_per_sequence"] <= d["use_per_batch"] + 1e-6)
    np.testing.assert_allclose(d["activation_ratio"], m["activation_ratio"], atol=1e-5)
    np.testing.assert_allclose(d["turned_on"] + d["turned_off"], 0.0, atol=0)  # step 1: first batch = now
