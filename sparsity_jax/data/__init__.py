"""seqio tasks and a deterministic, resumable, multi-host batch iterator.

Tasks: ``local_code`` (the stdlib's .py files, offline, the default), ``text_files``
(``data.text_glob`` of .txt / .jsonl files), ``c4_en`` and ``lm1b`` (tfds, need the
prepared datasets). `get_batches` yields this process's rows of each global batch and
resumes from the number of global batches consumed. Importing this package imports
TensorFlow, which is confined to the CPU: it never takes a GPU/TPU away from JAX.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")



def _import_tensorflow_quietly():
    """Imports TensorFlow (and tensorflow_text, which seqio loads) with the C++ start-up
    banner (oneDNN / CUDA-stub lines that TF_CPP_MIN_LOG_LEVEL no longer silences) sent
    to /dev/null; errors still propagate after stderr is restored."""
    sys.stderr.flush()
    devnull, saved = os.open(os.devnull, os.O_WRONLY), os.dup(2)
    try:
        os.dup2(devnull, 2)
        import tensorflow
        try:
            import tensorflow_text  # noqa: F401
        except ImportError:
            pass
        return tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


tf = _import_tensorflow_quietly()

for _kind in ("GPU", "TPU"):
    try:
        tf.config.set_visible_devices([], _kind)
    except (RuntimeError, ValueError):  # no such device kind, or TF already started
        pass

from sparsity_jax.data.pipeline import get_batches  # noqa: E402
from sparsity_jax.data.tasks import (  # noqa: E402
    BUILTIN_TASKS, check_prepared, get_task, get_vocabulary, resolve_config)
from sparsity_jax.settings import DataSettings  # noqa: E402


def vocab_size(data_cfg, cache_dir: str | None = None) -> int:
    """Number of token ids of the vocabulary of `data_cfg` (259 for bytes)."""
    return int(get_vocabulary(data_cfg, cache_dir).vocab_size)


__all__ = ["BUILTIN_TASKS", "DataSettings", "check_prepared", "get_batches", "get_task",
           "get_vocabulary", "resolve_config", "vocab_size"]
