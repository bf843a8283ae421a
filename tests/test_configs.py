"""Every shipped config loads and builds a valid model config."""
import glob
import os

import pytest

from sparsity_jax.errors import UserError
from sparsity_jax.settings import REPO_CONFIGS, load

FILES = sorted(glob.glob(str(REPO_CONFIGS / "**" / "*.py"), recursive=True))


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, REPO_CONFIGS) for p in FILES])
def test_config_builds(path):
    settings = load(path)
    mcfg = settings.model_config(vocab_size=32000)
    assert mcfg.num_layers > 0 and settings.train.steps > 0


@pytest.mark.parametrize("act,d_ff", [("relu", 8192), ("relu2", 8192), ("silu", 8192), ("swiglu", 5376)])
def test_relu2_parameter_matched_widths(act, d_ff):
    mcfg = load(f"configs/relu2/1p3b.py:{act}").model_config(vocab_size=32000)
    assert mcfg.d_ff == d_ff and mcfg.activation == act
    assert abs(mcfg.non_embedding_params() - 1.21e9) / 1.21e9 < 0.05  # ≈1.2B non-embedding for both kinds


def test_bad_config_argument():
    with pytest.raises(UserError, match="cannot be built"):
        load("configs/relu2/1p3b.py:tanh")
