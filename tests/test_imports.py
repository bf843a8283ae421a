"""The import graph in floors: a package imports only packages on lower floors (every
import counted, function-local ones included), so there is no cycle between packages; only
`cli.py` imports `sparsity_jax.commands` (no command imports another command)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sparsity_jax"

# Each top-level package (or module) of sparsity_jax and its floor. The data flow runs up
# the floors: tokens (data) → the model (nn) → its records → metrics → the shared runtime
# (the forward, trained workdirs) → the capabilities built on it → the renderers of their
# results → the workflows that compose them → the commands → the command table.
FLOORS = {
    "errors": 0,  # the one exception type a user sees, and its helpers
    "nn": 1,  # Flax modules and sparsity rules: nothing of the package but errors
    "settings": 2, "metrics": 2,  # typed config (names the nn modes); pure functions over arrays
    "ssd": 2,  # MoEfication algorithms over nn parameters: k-means, ARI, conversion, schedule, MoE sweeps
    "devices": 2,  # the machine: mesh and logical-axis rules, processes, hardware table, memory, timing
    "data": 3,  # seqio tasks and batches, from the data settings
    "runtime": 4,  # what every capability shares of a run: the forward, workdirs, checkpoints, trained runs
    # the capabilities: each composes the floors below and none imports another
    "methods": 5, "train": 5, "search": 5, "predict": 5, "infer": 5, "scaling": 5, "hf": 5,
    "report": 6,  # renders the capabilities' results (predict's aspects, scaling's curves)
    "workflows": 7,  # what a command does, as library functions composing the capabilities
    "commands": 8,  # parse, call one workflow, print
    "cli": 9,  # the command table
}
# (importing module, imported package): why the import may cross its floor
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "sparsity_jax" and len(parts) > 1 else None


def package_imports() -> set[tuple[str, str, str]]:
    """{(module path, its package, an imported package)} over every module below the package
    root (whose __init__ only prepares the environment), function-local imports included."""
    out = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "__init__.py":
            continue
        own = rel.split("/")[0].removesuffix(".py")
        out |= {(rel, own, pkg) for m in _imports(path) if (pkg := _package(m)) not in (None, own)}
    return out


def test_every_package_has_a_floor():
    names = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert names == set(FLOORS), f"floors missing {names - set(FLOORS)}, stale {set(FLOORS) - names}"


def test_packages_import_only_lower_floors():
    crossing = {(rel, pkg): f"{rel} → {pkg} (floor {FLOORS[own]} → {FLOORS[pkg]})"
                for rel, own, pkg in package_imports() if FLOORS[pkg] >= FLOORS[own]}
    bad = sorted(v for k, v in crossing.items() if k not in EXCEPTIONS)
    assert not bad, "imports of a package on the same or a higher floor:\n" + "\n".join(bad)
    assert not set(EXCEPTIONS) - set(crossing), f"stale exceptions: {set(EXCEPTIONS) - set(crossing)}"


def test_no_cycle_between_packages():
    edges = {}
    for _, own, pkg in package_imports():
        edges.setdefault(own, set()).add(pkg)

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cyclic = sorted(p for p in edges if p in reach(p))
    assert not cyclic, f"packages on an import cycle: {cyclic}"


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
NOT_WORKDIR = ("data/", "settings/", "scaling/data", "devices/memory.py", "runtime/workdir.py")


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
