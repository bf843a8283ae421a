"""Loading ml_collections config files and `--config.a.b=value` overrides.

Config files are Python files under `configs/` with `get_config()`. Overrides are typed
by the value they replace (bool, int, float, str, tuples), and an unknown key is a
`UserError` naming the valid keys, never a silent new field.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import ml_collections

from sparsity_jax.errors import UserError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(path: str) -> Path:
    """`path` as given, else relative to the repository's configs/ directory."""
    for cand in (Path(path), REPO_CONFIGS / path, REPO_CONFIGS.parent / path):
        if cand.is_file():
            return cand
    raise UserError(f"config file {path!r} not found; pass a path like configs/default.py")


def load_config(path: str = "configs/default.py") -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file; `file.py:ARG` calls `get_config("ARG")`
    (as ml_collections' config_flags do), e.g. configs/relu2/1p3b.py:swiglu."""
    path, _, arg = path.partition(":")
    file = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"_sparsity_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {file} has no get_config() function")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"config {path}:{arg} cannot be built ({e})") from None
    cfg.lock()
    return cfg


def _parse_value(raw: str, old):
    if isinstance(old, bool):
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ValueError(raw)
    if isinstance(old, int):
        return int(raw)
    if isinstance(old, float):
        return float(raw)
    if isinstance(old, (tuple, list)):
        value = ast.literal_eval(raw)
        return type(old)(value if isinstance(value, (tuple, list)) else (value,))
    if old is None:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    return raw


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Sets `a.b.c` keys from strings, typed like the current values."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    for key, raw in overrides.items():
        *parents, leaf = key.split(".")
        node = cfg
        for i, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise UserError(f"unknown config key 'config.{'.'.join(parents[: i + 1])}'; valid: {', '.join(sorted(node.keys()))}")
            node = node[part]
        if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
            where = ".".join(parents) or "config"
            raise UserError(f"unknown config key 'config.{key}'; valid keys under {where}: {', '.join(sorted(node.keys()))}")
        try:
            node[leaf] = _parse_value(raw, node[leaf])
        except (ValueError, SyntaxError):
            raise UserError(f"config.{key}={raw!r} is not a valid {type(node[leaf]).__name__}") from None
    cfg.lock()
    return cfg


def split_override_args(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates `--config.a.b=v` / `--config.a.b v` arguments from the others."""
    rest, overrides, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{arg} needs a value, as in {arg}=VALUE")
                i, value = i + 1, argv[i + 1]
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def config_from_json(text: str) -> ml_collections.ConfigDict:
    import json

    return ml_collections.ConfigDict(json.loads(text))


def default_workdir(cfg_path: str) -> str:
    return os.path.join("workdirs", Path(cfg_path).stem)
