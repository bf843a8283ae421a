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


# Below the commands nothing parses arguments or reads a ConfigDict (`settings` does), and
# a workdir path goes through epath (`runtime.workdir`): builtin `open()` and `os.path` are
# left to the modules that read what is not a workdir (the corpus, config files, the
# package's own data, /proc/meminfo) and to runtime/workdir.py, which makes local paths absolute.
NOT_WORKDIR = ("data/", "settings/", "scaling/data", "runtime/memory.py", "runtime/workdir.py")


def _below_commands():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel != "cli.py" and not rel.startswith("commands/"):
            yield rel, ast.parse(path.read_text(), str(path))


def test_nothing_below_the_commands_parses_arguments_or_reads_a_config_dict():
    offenders = {rel: sorted(m for m in _imports(PACKAGE / rel) if m.split(".")[0] in ("argparse", "ml_collections"))
                 for rel, _ in _below_commands() if not rel.startswith("settings/")}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_builtin_open_or_os_path_on_workdir_paths():
    offenders = {}
    for rel, tree in _below_commands():
        if rel.startswith(NOT_WORKDIR):
            continue
        for node in ast.walk(tree):
            opened = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"
            os_path = (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                       and node.value.id == "os")
            if opened or os_path:
                offenders.setdefault(rel, []).append(node.lineno)
    assert not offenders, f"builtin open() / os.path below the commands (use runtime.workdir): {offenders}"


def test_no_module_over_400_lines():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
