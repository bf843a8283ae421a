"""Deterministic, resumable, multi-host batches of packed LM rows.

The split is cut into ``data.num_shards`` virtual shards, independent seeded pipelines,
so the global batch is the same for every process count that divides the shard count,
and a run resumes exactly from the number of global batches it consumed. `get_batches`
states the sharding, resume and padding rules; `shard_rows_fn` builds one shard's rows.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator

import numpy as np
import seqio
import tensorflow as tf

from sparsity_jax.data import tasks
from sparsity_jax.errors import UserError

# seqio LMFeatureConverter output names → our batch keys.
_KEYS = {"decoder_input_tokens": "inputs", "decoder_target_tokens": "targets",
         "decoder_segment_ids": "segment_ids", "decoder_positions": "positions",
         "decoder_loss_weights": "loss_weights"}
_RAN_DRY = "a virtual shard ran out of data"


def shard_seed(seed: int, shard: int, stream: int = 0) -> int:
    """Seed of random `stream` (0: file order, 1: shuffle buffer) of virtual `shard`."""
    return int(np.random.SeedSequence([int(seed), int(shard), int(stream)])
               .generate_state(1)[0])


def _shard_source(task: seqio.Task, split: str, shard: int, num_shards: int,
                  seed: int) -> tf.data.Dataset:
    """Raw examples of one virtual train shard, sharded the way seqio's Task does it."""
    source = task.source
    info = seqio.ShardInfo(index=shard, num_shards=num_shards)
    seed = shard_seed(seed, shard)
    if source.supports_arbitrary_sharding or len(source.list_shards(split)) >= num_shards:
        return source.get_dataset(split=split, shuffle=True, seed=seed, shard_info=info)
    return source.get_dataset(split=split, shuffle=True, seed=seed).shard(
        num_shards, shard)


def shard_rows_fn(task: seqio.Task, *, split: str, shards: range, num_shards: int,
                  seq_len: int, seed: int, shuffle_buffer: int
                  ) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """A function from a position ``i`` in `shards` (int64 tensor) to the packed rows
    (dicts of (seq_len,) int32 tensors) of virtual shard ``shards[i]``.

    The pipeline is the one of ``seqio.Task.get_dataset`` (precache preprocessors,
    repeat for train, postcache preprocessors, trim, seeded shuffle for train) followed
    by ``LMFeatureConverter(pack=True)``. It takes the shard as a tensor so that tf.data
    traces (autographs) the seqio functions once, not once per shard (≈0.7 s each).

    Train shards split the source (by file where it has enough files); ``switch_case``
    picks shard ``i``'s source dataset, so only branch ``i`` ever iterates it (a source
    that reshuffles its files every epoch draws its seeds from a generator shared by
    all iterators of that dataset, so sharing it between branches would make the order
    depend on thread timing).
    Validation shards each read the whole split and keep every S-th chunk: that
    balances them to within a chunk (file-level shards of a small validation split are
    very uneven, and the padded batch count follows the largest one) at the cost of
    S× tokenization of the validation split.
    """
    train, lengths = split == "train", {"targets": seq_len}
    shard_ids = tf.constant(list(shards), tf.int64)
    if train:
        sources = [_shard_source(task, split, s, num_shards, seed) for s in shards]
        buffer_seeds = tf.constant([shard_seed(seed, s, 1) for s in shards], tf.int64)

        def raw(i: tf.Tensor) -> tf.data.Dataset:
            return tf.switch_case(tf.cast(i, tf.int32), [lambda d=d: d for d in sources])
    else:
        # held-out documents drawn across the whole split: a fixed seeded file order where the
        # source gives one (local corpora are sorted by path), else the source's own order
        fixed = getattr(task.source, "fixed_order_shuffle", False)
        whole = task.source.get_dataset(split=split, shuffle=fixed, seed=shard_seed(seed, 0, 2) if fixed else None)

        def raw(i: tf.Tensor) -> tf.data.Dataset:
            del i
            return whole

    def rows(i: tf.Tensor) -> tf.data.Dataset:
        ds = task.preprocess_precache(raw(i), seed=seed)
        if train:
            ds = ds.repeat()  # each pass re-reads (and reshuffles) the shard's files
        ds = task.preprocess_postcache(ds, sequence_length=lengths, seed=seed)
        ds = seqio.utils.trim_dataset(ds, lengths, task.output_features)
        if train:
            ds = ds.shuffle(shuffle_buffer, seed=tf.gather(buffer_seeds, i))
        else:
            ds = ds.shard(num_shards, tf.gather(shard_ids, i))
        ds = seqio.LMFeatureConverter(pack=True)(ds, lengths)
        return ds.map(lambda ex: {_KEYS[k]: ex[k] for k in _KEYS})

    return rows


@functools.lru_cache(maxsize=None)
def _num_rows(task_name: str, split: str, num_shards: int, seq_len: int
              ) -> tuple[int, ...]:
    """Packed rows of each unshuffled one-epoch shard (counted once, cached)."""
    rows = shard_rows_fn(seqio.TaskRegistry.get(task_name), split=split,
                         shards=range(num_shards), num_shards=num_shards,
                         seq_len=seq_len, seed=0, shuffle_buffer=1)
    counts = tf.data.Dataset.range(num_shards).map(
        lambda i: rows(i).reduce(np.int64(0), lambda count, _: count + 1),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return tuple(int(c) for c in counts.as_numpy_iterator())


def _pad_rows(batch: dict, rows: int) -> dict:
    """Pads a (b ≤ rows, T) batch with all-zero rows to (rows, T)."""
    def pad(x):
        x = tf.pad(x, [[0, rows - tf.shape(x)[0]], [0, 0]])
        x.set_shape([rows, x.shape[1]])
        return x
    return {k: pad(v) for k, v in batch.items()}


def _shard_batches(rows: tf.data.Dataset, *, train: bool, batch: int, seq_len: int
                   ) -> tf.data.Dataset:
    """Batches of `batch` rows; validation: padded, then all-zero batches forever."""
    if train:
        return rows.batch(batch, drop_remainder=True)
    zeros = {k: tf.zeros([batch, seq_len], tf.int32) for k in _KEYS.values()}
    return (rows.batch(batch).map(lambda b: _pad_rows(b, batch))
            .concatenate(tf.data.Dataset.from_tensors(zeros).repeat()))


def _check_args(cfg, split: str, global_batch_size: int, seq_len: int,
                process_index: int, process_count: int, start_batch: int) -> None:
    """UserError naming the fix for any impossible combination."""
    shards = int(cfg.num_shards)
    if split not in ("train", "validation"):
        raise UserError(f"split {split!r} is unknown; use 'train' or 'validation'.")
    if seq_len < 2 or global_batch_size < 1 or start_batch < 0:
        raise UserError("seq_len must be ≥ 2, the global batch size ≥ 1 and "
                        "start_batch ≥ 0; fix the train/eval config.")
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} is not in [0, "
                        f"{process_count}); pass jax.process_index().")
    if shards % process_count:
        raise UserError(f"data.num_shards={shards} is not divisible by the "
                        f"{process_count} processes; set data.num_shards to a "
                        "multiple of the process count.")
    if global_batch_size % shards:
        raise UserError(f"global batch size {global_batch_size} is not divisible by "
                        f"data.num_shards={shards}; make the batch size a multiple of "
                        "data.num_shards.")


def get_batches(data_cfg: "tasks.DataSettings", *, split: str, global_batch_size: int, seq_len: int,
                process_index: int = 0, process_count: int = 1, start_batch: int = 0,
                cache_dir: str | None = None, max_batches: int | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of global batches `start_batch`, `start_batch + 1`, ...

    Yields dicts of (global_batch_size // process_count, seq_len) arrays: ``inputs``,
    ``targets``, ``segment_ids`` (0 = padding), ``positions`` (int32) and
    ``loss_weights`` (float32, 0 on padding). Train never ends (unless `max_batches`);
    validation ends after one epoch (its batch count: below). `max_batches` bounds how
    many batches this iterator yields. Bad arguments raise UserError here, at the call;
    the pipeline is built here too (≈1-3 s, plus ≈6 s of one-time TensorFlow tracing in
    a fresh process), and runs in the background.

    Virtual shards make the global batch independent of the process count. The split is
    cut into ``S = data.num_shards`` virtual shards (``seqio.ShardInfo(s, S)``); shard
    ``s`` is an independent pipeline seeded by ``(data.seed, s)``::

        source shard s → rekey → tokenize → EOS → chunk (≤ seq_len) → shuffle (train)
        → pack (seqio LMFeatureConverter) → batches of global_batch_size // S rows

    Global batch ``i`` is the concatenation over ``s = 0 .. S-1`` of the ``i``-th batch
    of each shard; process ``p`` of ``P`` owns shards ``[p·S/P, (p+1)·S/P)`` and yields
    their concatenation, its ``global_batch_size // P`` local rows. The global batch is
    hence the same for every ``P`` that divides ``S`` (2 processes × 4 devices see what
    1 × 8 sees). A process runs its shards as the branches of one deterministic
    parallel interleave.

    Resume: the position to store in a checkpoint is the number of GLOBAL batches
    consumed; ``get_batches(..., start_batch=that)`` continues exactly where the run was
    (each shard pipeline regenerates and skips ``start_batch`` batches, which costs host
    time proportional to ``start_batch``, at the iterator's throughput).

    Train repeats forever; the file order (local sources) and the shuffle buffer are
    reshuffled every epoch, deterministically. Validation runs one epoch, its files in
    one seeded order (local corpora; TFDS sources in their own order), and is sharded by chunk (chunk ``j`` → shard ``j mod S``) so the shards are
    balanced. A shard's last partial batch, and the batches of a shard that ran out
    before the others, are all-zero rows (segment_ids 0, loss_weights 0): every batch
    has the same shape, and every process yields the same number of batches: the
    maximum over all S shards, found by counting each shard's packed rows once per
    process (cached), or exactly ``max_batches`` when that is given (skips the count;
    trailing batches may then be all padding). For big validation sets (c4) give
    ``max_batches``. An empty validation split yields no batch.

    Example::

        cfg = DataSettings()        # task="local_code", vocab="byte", ... (sparsity_jax.settings)
        vocab_size(cfg)             # 259 for bytes (sparsity_jax.data.vocab_size)
        for batch in get_batches(cfg, split="train", global_batch_size=32, seq_len=128,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(), start_batch=step):
            batch["inputs"]  # (32 // process_count, 128) int32
    """
    cfg = tasks.resolve_config(data_cfg)
    tasks.check_prepared(cfg)
    _check_args(cfg, split, global_batch_size, seq_len, process_index, process_count,
                start_batch)
    task = tasks.get_task(cfg, cache_dir)
    num_shards, train = int(cfg.num_shards), split == "train"
    per_shard = global_batch_size // num_shards
    total = max_batches
    if not train and total is None:
        counts = _num_rows(task.name, split, num_shards, seq_len)  # all 0: an empty split, no batch
        total = max(-(-c // per_shard) for c in counts) - start_batch
    shards = range(process_index * num_shards // process_count,
                   (process_index + 1) * num_shards // process_count)
    rows = shard_rows_fn(task, split=split, shards=shards, num_shards=num_shards,
                         seq_len=seq_len, seed=int(cfg.seed),
                         shuffle_buffer=int(cfg.shuffle_buffer))

    def branch(i: tf.Tensor) -> tf.data.Dataset:
        ds = _shard_batches(rows(i), train=train, batch=per_shard, seq_len=seq_len)
        ds = ds.skip(start_batch)
        if total is not None:
            ds = ds.take(max(total, 0))
        return ds.map(lambda b: (i, b))

    n = len(shards)
    ds = tf.data.Dataset.range(n).interleave(
        branch, cycle_length=n, block_length=1, num_parallel_calls=n,
        deterministic=True).batch(n, drop_remainder=True)
    ds = ds.map(lambda ids, b: _concat_shards(ids, b, n)).prefetch(2)
    too_small = UserError(f"the train split of task {task.name} is too small for "
                          f"data.num_shards={num_shards} shards of {per_shard} rows; "
                          "add data or lower data.num_shards.")
    expected = (math.inf if total is None else total) if train else None
    return _iterate(ds, expected, too_small)


def _concat_shards(ids: tf.Tensor, batch: dict, n: int) -> dict:
    """(n, b, T) per-shard batches, in shard order (checked) → (n·b, T) rows."""
    check = tf.debugging.assert_equal(ids, tf.range(n, dtype=ids.dtype),
                                      message=_RAN_DRY)
    with tf.control_dependencies([check]):
        return {k: tf.reshape(v, [-1, v.shape[-1]]) for k, v in batch.items()}


def _iterate(ds: tf.data.Dataset, expected: float | None, too_small: UserError
             ) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of `ds`. Raises `too_small` when a shard ran dry or the stream
    ends before `expected` batches (train: max_batches or inf; validation: None)."""
    batches, yielded = ds.as_numpy_iterator(), 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except tf.errors.InvalidArgumentError as e:
            if _RAN_DRY not in str(e):
                raise
            raise too_small from None
        batch["loss_weights"] = batch["loss_weights"].astype(np.float32)
        yield batch
        yielded += 1
    if expected is not None and yielded < expected:
        raise too_small
