"""The import graph's top floor: only `cli.py` imports `sparsity_jax.commands` (no command
imports another command, no library module reaches up into the commands)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sparsity_jax"


def _imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_only_cli_imports_the_commands():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "cli.py":
            continue
        bad = sorted(m for m in _imports(path) if m.startswith("sparsity_jax.commands")
                     and not (rel.startswith("commands/") and m in ("sparsity_jax.commands", "sparsity_jax.commands.common")))
        if bad:
            offenders[rel] = bad
    assert not offenders, f"modules importing sparsity_jax.commands outside cli.py: {offenders}"
