"""`train` knows no training method: it imports nothing of `methods` and names none of
them, so adding a method touches `methods/` and `settings/` only (the command hands the
trainer `methods.make_method`)."""
import ast
import pathlib

from sparsity_jax.settings import METHODS

TRAIN = pathlib.Path(__file__).resolve().parents[2] / "sparsity_jax" / "train"
NAMES = set(METHODS) | {"unit_mask", "moe"}  # the methods, dead-unit masking, and MoE steps


def _trees():
    return {path.name: ast.parse(path.read_text(), str(path)) for path in sorted(TRAIN.glob("*.py"))}


def test_train_imports_no_methods_module():
    offenders = {}
    for name, tree in _trees().items():
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            bad = [m for m in modules if m == "sparsity_jax.methods" or m.startswith("sparsity_jax.methods.")]
            if bad:
                offenders.setdefault(name, []).extend(bad)
    assert not offenders, f"train/ imports methods: {offenders}"


def _words(identifier: str) -> set[str]:
    parts = identifier.lower().split("_")
    return set(parts) | {"_".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 2, len(parts) + 1)}


def test_train_names_no_method():
    """No identifier (a name, attribute, argument, function or class) nor string
    constant of train/ names a method (docstrings may cite the papers)."""
    offenders = {}
    for name, tree in _trees().items():
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                found |= _words(node.id) & NAMES
            elif isinstance(node, ast.Attribute):
                found |= _words(node.attr) & NAMES
            elif isinstance(node, ast.arg):
                found |= _words(node.arg) & NAMES
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found |= _words(node.name) & NAMES
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found |= {w for w in NAMES if w in node.value.lower().replace(".", " ").replace("=", " ").split()}
        if found:
            offenders[name] = sorted(found)
    assert not offenders, f"train/ names training methods: {offenders}"
