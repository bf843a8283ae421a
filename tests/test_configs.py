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


@pytest.mark.parametrize("body,phrase", [
    ("import configs.default\n\ndef get_config():\n    return configs.default.get_config()\n",
     "cannot be loaded (ModuleNotFoundError: No module named 'configs'"),
    ("def get_config():\n    raise RuntimeError('no corpus here')\n", "get_config() failed (RuntimeError: no corpus here)"),
    ("def get_config(:\n", "cannot be loaded (SyntaxError"),
])
def test_config_file_that_fails_is_one_sentence_exit_2(tmp_path, capsys, monkeypatch, body, phrase):
    """A config file whose import or get_config() raises: its name and the error in one
    line, exit 2, nothing written (issue 19)."""
    from sparsity_jax.cli import main

    monkeypatch.chdir(tmp_path)  # outside the repository: `import configs` fails as a user would see it
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if os.path.abspath(p or ".") !=
                                     os.path.dirname(str(REPO_CONFIGS))])
    path = tmp_path / "mine.py"
    path.write_text(body)
    assert main(["train", "--config", str(path), "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and phrase in err[0], err
    assert not (tmp_path / "run").exists()
