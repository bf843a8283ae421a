"""Every shipped config loads and builds a valid model config."""
import glob
import os

import pytest

from sparsity_jax.config import REPO_CONFIGS, load_config
from sparsity_jax.errors import UserError
from sparsity_jax.train.setup import model_config

FILES = sorted(glob.glob(str(REPO_CONFIGS / "**" / "*.py"), recursive=True))


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, REPO_CONFIGS) for p in FILES])
def test_config_builds(path):
    cfg = load_config(path)
    mcfg = model_config(cfg, vocab_size=32000)
    assert mcfg.num_layers > 0 and cfg.train.steps > 0


@pytest.mark.parametrize("act,d_ff", [("relu", 8192), ("relu2", 8192), ("silu", 8192), ("swiglu", 5376)])
def test_relu2_parameter_matched_widths(act, d_ff):
    mcfg = model_config(load_config(f"configs/relu2/1p3b.py:{act}"), vocab_size=32000)
    assert mcfg.d_ff == d_ff and mcfg.activation == act
    assert abs(mcfg.non_embedding_params() - 1.21e9) / 1.21e9 < 0.05  # ≈1.2B non-embedding for both kinds


def test_bad_config_argument():
    with pytest.raises(UserError, match="cannot be built"):
        load_config("configs/relu2/1p3b.py:tanh")
