"""Settings: the only reader of config files and saved configs.

`load("configs/default.py", {"train.steps": "100"})` (or `from_saved(checkpoint config)`)
returns a frozen, validated `Settings` of typed sections; everything below the commands
takes these dataclasses, never a ConfigDict or a raw dict.
"""
from sparsity_jax.settings.load import (
    DEFAULT_CONFIG, REPO_CONFIGS, apply_overrides, default_config, from_saved, load, load_file, resolve_config_path,
    upgrade, user_cache_dir, variants,
)
from sparsity_jax.settings.schema import (
    BUILTIN_TASKS, METHODS, MOE_METHODS, RECORD, SCHEDULES, DataSettings, MeshSettings, MethodSettings,
    OptimizerSettings, Settings, TrainSettings, UnitMaskSettings,
)

__all__ = [
    "BUILTIN_TASKS", "DEFAULT_CONFIG", "METHODS", "MOE_METHODS", "RECORD", "REPO_CONFIGS", "SCHEDULES",
    "DataSettings", "MeshSettings", "MethodSettings", "OptimizerSettings", "Settings", "TrainSettings",
    "UnitMaskSettings", "apply_overrides", "default_config", "from_saved", "load", "load_file",
    "resolve_config_path", "upgrade", "user_cache_dir", "variants",
]
