"""Where settings come from: config files, `--config.a.b=V` overrides, saved configs.

Config files are Python files with `get_config()` returning an ml_collections
ConfigDict (this module is the only reader of one); `file.py:ARG` calls
`get_config("ARG")`. Overrides are strings parsed by the type of the field they set.
Config files and saved configs (a checkpoint's metadata, config.json) pass through
`upgrade`, which holds every back-compat shim, then the same validation.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import ml_collections

from sparsity_jax.errors import UserError
from sparsity_jax.settings.schema import SECTIONS, Settings, field_types

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = "configs/default.py"
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def user_cache_dir() -> str:
    """The per-user cache: ``$SPARSITY_JAX_CACHE``, else ``~/.cache/sparsity_jax`` (SentencePiece
    models trained outside a workdir; ``xla/``: the CLI's JAX compilation cache)."""
    return os.environ.get("SPARSITY_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sparsity_jax"))


def resolve_config_path(path: str) -> Path:
    """`path` as given, else relative to the repository's configs/ directory."""
    for cand in (Path(path), REPO_CONFIGS / path, REPO_CONFIGS.parent / path):
        if cand.is_file():
            return cand
    raise UserError(f"config file {path!r} not found; pass a path like configs/default.py.")


def _module(path: str):
    file = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"_sparsity_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # an import that fails, a syntax error: the user's file, one sentence
        raise UserError(f"config file {file} cannot be loaded ({_reason(e)}); fix that file or its imports.") from None
    return module, file


def _reason(e: Exception) -> str:
    """`Type: first line of the message` of an exception raised by a config file."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def variants(path: str) -> tuple[str, ...]:
    """The `VARIANTS` a config file names (its `:ARG` values, e.g. the activations of
    configs/relu2/tiny.py); () when it names none."""
    return tuple(getattr(_module(path.partition(":")[0])[0], "VARIANTS", ()))


def load_file(path: str = DEFAULT_CONFIG) -> dict:
    """The plain nested dict of a config file's `get_config()` (`file.py:ARG` passes ARG)."""
    path, _, arg = path.partition(":")
    module, file = _module(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {file} has no get_config() function; define one that returns a ConfigDict.")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except (KeyError, ValueError, TypeError) as e:
        if arg:
            raise UserError(f"config {path}:{arg} cannot be built ({e}); pass one of the variants it names.") from None
        raise UserError(f"config file {file}: get_config() failed ({_reason(e)}); fix that file.") from None
    except Exception as e:
        raise UserError(f"config file {file}: get_config() failed ({_reason(e)}); fix that file.") from None
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _parse(key: str, kind: type, raw: str):
    try:
        if kind is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(raw)
            return raw.lower() in _TRUE
        return kind(raw)
    except ValueError:
        raise UserError(f"config.{key}={raw!r} is not a valid {kind.__name__}; give e.g. "
                        f"{ {int: '10', float: '0.5', bool: 'true'}.get(kind, 'text')}.") from None


def apply_overrides(tree: dict, overrides: dict[str, str]) -> dict:
    """A copy of `tree` with `a.b` keys set from strings, each parsed by its field's type;
    an unknown key is a UserError that lists the valid ones (old keys: `upgrade_key`)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for key, raw in overrides.items():
        key = upgrade_key(key)
        section, _, leaf = key.partition(".")
        if not leaf:
            if key != "seed":
                raise UserError(f"unknown config key 'config.{key}'; valid: seed, {', '.join(SECTIONS)}.")
            out["seed"] = _parse(key, int, raw)
            continue
        if section not in SECTIONS:
            raise UserError(f"unknown config key 'config.{section}'; valid: seed, {', '.join(SECTIONS)}.")
        types = field_types(SECTIONS[section])
        if leaf not in types:
            raise UserError(f"unknown config key 'config.{key}'; valid keys under {section}: "
                            f"{', '.join(sorted(types))}.")
        out.setdefault(section, {})[leaf] = _parse(key, types[leaf], str(raw))
    return out


def load(path: str = DEFAULT_CONFIG, overrides: dict[str, str] | None = None) -> Settings:
    """Validated settings of a config file (see `upgrade`) with overrides applied."""
    return Settings.from_dict(apply_overrides(upgrade(load_file(path)), overrides or {}))


def upgrade(saved: dict) -> dict:
    """A config (a file's, a checkpoint's metadata, config.json) in today's form; the only
    place that knows older forms:
      * section `ssd` (before it held every training method) is `method`, and its field
        `method` is `name` (`upgrade_key` does the same for an override's key);
      * `ssd.enabled = true` (before `ssd.method` existed) means method ssd;
      * `ssd.router_grad` saved as the string "true"/"false";
      * keys added since (e.g. `method.router_grad`, `data.tfds_data_dir`) take today's
        defaults; a run trained before `router_grad` existed had the router gradient on,
        and resumed it continues with constant gates (the default).
    """
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    old = tree.pop("ssd", None)
    if isinstance(old, dict):
        if old.pop("enabled", False) and old.get("method", "dense") == "dense":
            old["method"] = "ssd"
        if "method" in old:
            old["name"] = old.pop("method")
        tree["method"] = {**old, **tree.get("method", {})}
    elif old is not None:
        tree["method"] = old  # not a dict: reported under today's name
    method = tree.get("method")
    if isinstance(method, dict):
        grad = method.get("router_grad")
        if isinstance(grad, str) and grad.lower() in ("true", "false"):
            method["router_grad"] = grad.lower() == "true"
    return tree


def upgrade_key(key: str) -> str:
    """An override's key in today's form: `ssd.method` is `method.name`, `ssd.X` `method.X`."""
    section, dot, leaf = key.partition(".")
    if section != "ssd" or not dot:
        return key
    return "method.name" if leaf == "method" else f"method.{leaf}"


def from_saved(saved: dict, overrides: dict[str, str] | None = None) -> Settings:
    """Validated settings of a saved config (see `upgrade`) with overrides applied."""
    return Settings.from_dict(apply_overrides(upgrade(saved), overrides or {}))


def default_config():
    """The defaults as an ml_collections ConfigDict: what configs/default.py returns and
    every paper config starts from."""
    return ml_collections.ConfigDict(Settings().to_dict())
