"""seqio tasks and a deterministic, resumable, multi-host batch iterator.

    cfg = default_data_config()            # task="local_code", vocab="byte", ...
    vocab_size(cfg)                         # 259 for bytes
    for batch in get_batches(cfg, split="train", global_batch_size=32, seq_len=128,
                             process_index=jax.process_index(),
                             process_count=jax.process_count(), start_batch=step):
        batch["inputs"]  # (32 // process_count, 128) int32

Tasks: ``local_code`` (the stdlib's .py files, offline, the default), ``text_files``
(``data.text_glob`` of .txt / .jsonl files), ``c4_en`` and ``lm1b`` (tfds, need the
prepared datasets). See ``tasks.py`` for the config fields and ``pipeline.py`` for the
virtual-shard determinism and the resume rule (checkpoint the number of GLOBAL batches
consumed, pass it back as ``start_batch``).

Importing this package imports TensorFlow, which is confined to the CPU: it never
takes a GPU/TPU away from JAX.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")



def _import_tensorflow_quietly():
    """Imports TensorFlow (and tensorflow_text, which seqio loads) with the C++ start-up
    banner (oneDNN / CUDA-stub lines that TF_CPP_MIN_LOG_LEVEL no longer silences) sent
    to /dev/null; errors still propagate after stderr is restored."""
    import sys

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
    BUILTIN_TASKS, default_data_config, get_task, get_vocabulary, resolve_config)


def vocab_size(data_cfg, cache_dir: str | None = None) -> int:
    """Number of token ids of the vocabulary of `data_cfg` (259 for bytes)."""
    return int(get_vocabulary(data_cfg, cache_dir).vocab_size)


__all__ = ["BUILTIN_TASKS", "default_data_config", "get_batches", "get_task",
           "get_vocabulary", "resolve_config", "vocab_size"]
