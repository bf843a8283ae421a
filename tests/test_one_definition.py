"""The sparsity rules and the activation maths are each written once (issue 26): the
predictor's score σ(W2·(W1·x) + b) and its 0.5 cut live in `nn/sparsify.py`, the gated
activation s ⊙ up(W_in x) in `nn/ffn.py`; the decode FFN (`infer/`), the predictor
training and the metrics call them. A grep over the package's code tokens (comments and
docstrings, which state the maths too, left out)."""
import io
import pathlib
import re
import tokenize

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sparsity_jax"
ONCE = {  # what: (pattern over the space-separated code tokens, the one file that may hold it)
    "the predictor's logits W2·(W1·x)": (r"@ [^@]{0,40}w1", "nn/sparsify.py"),
    "the predictor's score, a sigmoid": (r"\bsigmoid \(", "nn/sparsify.py"),
    "the predictor's cut at 0.5": (r"SCORE_THRESHOLD =", "nn/sparsify.py"),
    "the predictor's cut applied": (r"> SCORE_THRESHOLD", "nn/sparsify.py"),
    "the gated activation s ⊙ up(W_in x)": (r"\. up \(", "nn/ffn.py"),
    "the threshold rule ‖n_i‖ ≥ t": (r"\bmag\w* >= ", "nn/sparsify.py"),
    "the neuron magnitude |a|·‖W_out‖": (r"abs \( a\w* \) \. astype \( jnp \. float32 \) \*", "nn/sparsify.py"),
}


def _code(path: pathlib.Path) -> str:
    """The file's tokens one space apart, without comments and docstrings (triple-quoted)."""
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    toks = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return " ".join(t.string for t in toks if t.type not in skip and not t.string.endswith('"""'))


@pytest.mark.parametrize("what", list(ONCE))
def test_defined_once(what):
    pattern, home = ONCE[what]
    where = {p.relative_to(PACKAGE).as_posix(): len(re.findall(pattern, _code(p))) for p in PACKAGE.rglob("*.py")}
    found = {k: n for k, n in where.items() if n}
    assert found == {home: 1}, f"{what} should appear once, in {home}; found {found}"
