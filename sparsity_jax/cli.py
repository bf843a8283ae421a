"""`sparsity-jax`: the command table and the exit codes.

  train     train a model (resumes from the workdir's latest checkpoint)
  evaluate  every checkpoint of a workdir → eval.json (+ PPL-p% with --ppl-p)
  report    hidden-unit use per layer over training, loss curves of several runs
  cett      per-layer thresholds for a target CETT on one checkpoint
  ppl       PPL-p% sparsity over checkpoints, Pareto curves, neuron statistics
  ssd       the SSD report and sparse inference with k = 1 … N experts
  compare   tiny ReLU / ReLU² / SiLU / SwiGLU models: PPL-1% sparsity and CETT curves
  scaling   activation-ratio scaling fits: the paper's curves (Table 2) or evaluated runs
  predictor train and evaluate low-rank activation predictors of a checkpoint (ReLU² §5.2)
  affinity  reuse ratio, co-activation gap and hot neurons at a CETT (ReLU² §5.3)
  generate  KV-cache decoding with a dense or sparse (threshold / predicted) FFN: text, tokens/s
  import    a local Hugging Face checkpoint (Llama, Mistral, Qwen2/3, Gemma, MiniCPM) or llama GGUF as a run
  export    a run's gated model as a Hugging Face directory that transformers loads

The evaluation commands (and `import`) take --text FILE: all of FILE (a .txt / .jsonl
file or glob) is the evaluation text, every token of it evaluated, no training split.

Every command keeps JAX's compiled programs in a persistent cache, so the next command
does not compile them again: $JAX_COMPILATION_CACHE_DIR where set, else
$SPARSITY_JAX_CACHE/xla or ~/.cache/sparsity_jax/xla (`use_compilation_cache`; delete the
directory to reclaim its space, JAX_ENABLE_COMPILATION_CACHE=false turns it off).

Exit codes: 0 done; 2 bad input (one sentence that names the fix, printed before
anything is written); 3 a non-finite loss (the last good checkpoint is kept); 130
interrupted. `sparsity-jax COMMAND --help` lists a command's options.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read by TensorFlow and XLA as they load

import absl.logging  # noqa: E402
import jax  # noqa: E402

from sparsity_jax.commands import (  # noqa: E402
    affinity, cett, common, compare, evaluate, export_hf, generate, import_hf, ppl, predictor, report, scaling, ssd,
    train)
from sparsity_jax.devices.memory import return_freed_memory  # noqa: E402
from sparsity_jax.devices.timing import TIMINGS  # noqa: E402
from sparsity_jax.errors import NonFiniteLoss, UserError  # noqa: E402
from sparsity_jax.settings import user_cache_dir  # noqa: E402

COMMANDS = {m.__name__.rsplit(".", 1)[-1]: m for m in (train, evaluate, report, cett, ppl, ssd, compare, scaling,
                                                       predictor, affinity, generate)}
COMMANDS.update({"import": import_hf, "export": export_hf})
OK, BAD_INPUT, NON_FINITE, INTERRUPTED = 0, 2, 3, 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsity-jax", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return p


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache for this process: $JAX_COMPILATION_CACHE_DIR where
    set (JAX reads it itself), else `settings.user_cache_dir()`/xla; every program is kept,
    however short its compile (unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says
    otherwise). Set here, where the CLI starts, never on importing the library."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        jax.config.update("jax_compilation_cache_dir", os.path.join(user_cache_dir(), "xla"))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _run(argv: list[str]) -> int:
    absl.logging.set_verbosity(absl.logging.ERROR)  # orbax logs routine notices (read-only options, ...) as warnings
    rest, overrides = common.split_overrides(argv)
    args = parser().parse_args(rest)
    module = COMMANDS[args.command]
    if overrides and not module.TAKES_CONFIG:
        raise UserError(f"sparsity-jax {args.command} takes no --config.* options; drop them.")
    args.overrides = overrides
    return module.run(args)


def main(argv: list[str] | None = None) -> int:
    use_compilation_cache()
    return_freed_memory()
    TIMINGS.start()  # the command's `time:` split counts from here (imports before it are not in it)
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except NonFiniteLoss as e:
        print(f"sparsity-jax: stopped: {e}; the last good checkpoint is kept", file=sys.stderr)
        return NON_FINITE
    except UserError as e:
        print(f"sparsity-jax: error: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("sparsity-jax: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
