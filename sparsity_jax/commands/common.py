"""What the commands share: the config options, the multi-process options, opening a
trained workdir, and writing results from process 0 only."""
from __future__ import annotations

import argparse

import jax

from sparsity_jax import settings
from sparsity_jax.devices import distributed
from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.runtime import trained
from sparsity_jax.runtime.workdir import write_json as write_workdir_json
from sparsity_jax.search.ppl import check_p

CONFIG_HELP = ("config file (FILE.py or FILE.py:VARIANT); any field is set with --config.SECTION.FIELD=VALUE, "
               "e.g. --config.train.steps=100")


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates `--config.a.b=V` / `--config.a.b V` arguments from the others."""
    rest, overrides, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{arg} needs a value, as in {arg}=VALUE.")
                i, value = i + 1, argv[i + 1]
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def add_config(p: argparse.ArgumentParser, default: str | None = None, what: str = "") -> None:
    """--config FILE (and, parsed before argparse, --config.a.b=V)."""
    p.add_argument("--config", default=default, help=what or CONFIG_HELP)


def add_workdir(p: argparse.ArgumentParser, help: str = "the directory of a trained run") -> None:
    p.add_argument("--workdir", required=True, help=help)


def add_text(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", default=None, metavar="FILE",
                   help="evaluate on this .txt / .jsonl file (or glob), all of it: no training split, every batch")


def add_eval_batches(p: argparse.ArgumentParser, text: bool = True) -> None:
    """--eval-batches N and (with `text`: commands that only evaluate) --text FILE."""
    p.add_argument("--eval-batches", type=int, default=None,
                   help="validation batches (default: the run's train.eval_batches; with --text: all)")
    if text:
        add_text(p)


def add_distributed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator", default=None, help="multi-process: coordinator host:port")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--distributed", action="store_true", help="initialise jax.distributed from the environment (TPU pods)")


def init_distributed(args) -> None:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)


def overrides(args) -> dict[str, str]:
    """The command's `--config.a.b=V` overrides, with --text FILE as the text_files task with
    all of FILE as validation (data.val_permille = 1000), all of it evaluated
    (train.eval_batches = 0), and --eval-batches as train.eval_batches."""
    out = dict(getattr(args, "overrides", {}) or {})
    if getattr(args, "text", None):
        out.update({"data.task": "text_files", "data.text_glob": args.text, "data.val_permille": "1000",
                    "train.eval_batches": "0"})
    if getattr(args, "eval_batches", None) is not None:
        out["train.eval_batches"] = str(args.eval_batches)
    return out


def trained_settings(args, ckpt, steps, config: str | None = None):
    """The settings of a trained workdir: the `config` file if given, else the config saved
    with its latest checkpoint; the command's overrides on top."""
    if config:
        return settings.load(config, overrides(args))
    return settings.from_saved(trained.saved_config(ckpt, steps[-1]), overrides(args))


def open_trained(args, check=None, workdir: str | None = None):
    """A trained workdir opened for evaluation (`runtime.trained.Trained`): `args.workdir` with
    --config if given, or another `workdir` with its own saved config.

    `check(settings, steps)` runs once the settings and checkpoint steps are known and
    before the model, data and validation batches are built: the place for argument
    checks that need them (a --step that must exist, k ≤ N)."""
    workdir = workdir or args.workdir
    ckpt, steps = trained.checkpoints(workdir)
    try:
        st = trained_settings(args, ckpt, steps, getattr(args, "config", None) if workdir == args.workdir else None)
        if check is not None:
            check(st, steps)
    except BaseException:
        ckpt.close()
        raise
    wd = trained.open_trained(workdir, st, ckpt, steps)
    log(f"validation: {trained.real_tokens(wd.val):,} real tokens in {len(wd.val)} batches of "
        f"{st.train.global_batch_size} × {st.train.seq_len}")
    return wd


def trained_params(args, check=None):
    """(workdir, step, params) of the checkpoint `args.step` (None: the latest) of a trained
    run: checks that step (and `check(settings, steps)`, as in `open_trained`) before
    anything is built, initialises jax.distributed, opens the workdir and restores."""
    def check_step(settings, steps):
        if getattr(args, "step", None) is not None and args.step not in steps:
            raise UserError(f"no checkpoint at step {args.step} in {args.workdir}; available steps: {steps}.")
        if check is not None:
            check(settings, steps)

    init_distributed(args)
    wd = open_trained(args, check_step)
    try:
        step = wd.step(getattr(args, "step", None))
        params = wd.restore(step)[0]["params"]
    finally:
        wd.close()
    return wd, step, params


def ppl_ps(text: str) -> list[float]:
    """The p values of --ppl-p (comma-separated), each a positive percentage."""
    ps = comma_list(text, float, "--ppl-p")
    for p in ps:
        check_p(p)
    return ps


def is_main() -> bool:
    return jax.process_index() == 0


def log(msg: str) -> None:
    """Prints on process 0."""
    if is_main():
        print(msg, flush=True)


def write_json(path, obj) -> None:
    """Writes `obj` as JSON on process 0 (directories created; any epath)."""
    if is_main():
        write_workdir_json(path, obj)
