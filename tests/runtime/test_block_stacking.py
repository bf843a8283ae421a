"""Checkpoints saved with stacked (scanned) blocks restore into per-layer blocks and vice
versa, with the same eval loss (issue 21, acceptance 4)."""
import jax
import numpy as np
import pytest

from sparsity_jax.methods import make_method
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.block_stacking import blocks_stacked, convert_blocks
from sparsity_jax.train.setup import build
from tests.train.helpers import synthetic_batch, tiny_config

VOCAB = 61


@pytest.fixture(scope="module")
def runs():
    """The same tiny model unrolled and scanned (8 devices, data=4 × fsdp=2), a batch and a
    trained-looking state of each (params moved off the init so the moments are non-zero)."""
    out = {}
    for scan in (False, True):
        run = build(tiny_config(**{"model.scan_layers": scan, "mesh.data": 4, "mesh.fsdp": 2}), VOCAB, make_method)
        out[scan] = run
    batch = out[False].device_batch(synthetic_batch(np.random.default_rng(1), 16, 32, VOCAB))
    return out, batch


def eval_loss(run, params, batch) -> float:
    out = run.eval_step(params, batch, run.sparsify({}))
    return float(out["loss_sum"] / out["weight"])


@pytest.mark.parametrize("saved_scanned", [True, False])
def test_checkpoint_restores_in_the_other_layout_with_the_same_eval_loss(saved_scanned, runs, tmp_path):
    (by_scan, batch) = runs
    src, dst = by_scan[saved_scanned], by_scan[not saved_scanned]
    state = src.init_state(jax.random.key(3))
    state = dict(state, opt_state=jax.tree.map(lambda x: x + 0.01 if x.dtype == np.float32 else x, state["opt_state"]))
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(7, state, {"data_position": 7})
    ckpt.close()

    reader = Checkpointer(tmp_path, read_only=True)  # one reader per kind of restore (orbax binds its handler)
    assert blocks_stacked(reader.saved_tree(7)) is saved_scanned
    restored, meta = reader.restore(7, dst.abstract_state)  # the whole train state (resume)
    reader.close()
    reader = Checkpointer(tmp_path, read_only=True)
    items, _ = reader.restore_items(7, dst.eval_items(reader.saved_tree(7)))  # what evaluation reads
    reader.close()
    assert meta["data_position"] == 7 and blocks_stacked(restored) is (not saved_scanned)
    expected = convert_blocks(jax.device_get(state), not saved_scanned)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
    jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s.sharding, a.ndim) or pytest.fail(str(a.sharding)),
                 restored["params"], dst.abstract_state["params"])
    loss = eval_loss(src, state["params"], batch)
    assert np.isfinite(loss) and loss > 1.0
    assert abs(eval_loss(dst, restored["params"], batch) - loss) <= 1e-6
    assert abs(eval_loss(dst, items["params"], batch) - loss) <= 1e-6


def test_scanned_step_counts_the_flops_of_every_block(runs):
    """XLA's cost analysis counts a scan's body once; MFU's FLOPs of a scanned step are
    those of the same step over per-layer blocks."""
    from sparsity_jax.methods import step_flops

    by_scan, _ = runs
    unrolled, scanned = step_flops(by_scan[False]), step_flops(by_scan[True])
    assert unrolled and scanned == pytest.approx(unrolled, rel=1e-6)
    naive = by_scan[True].train_step.lower(by_scan[True].abstract_state, by_scan[True].abstract_batch(),
                                            by_scan[True].sparsify({}), None).cost_analysis()["flops"]
    assert naive < 0.8 * unrolled  # what counting the scanned step itself would report
