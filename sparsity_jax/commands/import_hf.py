"""`sparsity-jax import`: a local Hugging Face checkpoint or llama / gemma3 GGUF file as a run directory.

  sparsity-jax import --hf DIR --workdir RUN [--dtype float32|bfloat16] [--config FILE] [--config.data.*=V ...]
  sparsity-jax import --gguf FILE.gguf --workdir RUN ...     (dequantized; default dtype float32)

RUN then holds checkpoints/0, config.json and tokenizer/ like a trained run, so every
evaluation command runs on it; --config / --config.* set its other sections (the data
to evaluate on, batch sizes, the mesh); --text FILE makes all of FILE its evaluation text
(as --text on each evaluation command does); its layers are scanned unless
--config.model.scan_layers=False (the one model key it takes). RUN must not exist
(`workflows.importing.import_checkpoint`).
"""
from __future__ import annotations

from sparsity_jax import settings
from sparsity_jax.commands import common
from sparsity_jax.errors import UserError
from sparsity_jax.workflows.importing import import_checkpoint

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="import a Hugging Face checkpoint (Llama, Mistral, Qwen, Gemma, Gemma 3, "
                                      "MiniCPM) or a llama / gemma3 GGUF file as a run")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="local Hugging Face model directory (config.json, *.safetensors)")
    src.add_argument("--gguf", help="local llama.cpp .gguf file (llama or gemma3 architecture; F32/F16/BF16, Q4-Q8, "
                                         "K-quants)")
    common.add_workdir(p, help="the new run directory to create")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="parameter and compute dtype (default: as stored, so bf16 stays bf16; GGUF: float32)")
    common.add_text(p)
    common.add_config(p)


def run(args) -> int:
    over = common.overrides(args)
    model_keys = sorted(k for k in over if k.startswith("model.") and k != "model.scan_layers")
    if model_keys:
        raise UserError(f"import takes the model from the checkpoint's config.json; drop --config.{model_keys[0]}.")
    if args.gguf and not args.gguf.endswith(".gguf"):
        raise UserError(f"--gguf {args.gguf} does not end in .gguf; pass a llama.cpp GGUF file.")
    base = settings.load(args.config or settings.DEFAULT_CONFIG, over)
    scan = base.model.scan_layers if "model.scan_layers" in over else True  # imports scan unless told otherwise
    out = import_checkpoint(args.gguf or args.hf, args.workdir, base, dtype=args.dtype, scan_layers=scan)
    common.log(f"imported {out.source} → {out.workdir}: {out.parameters:,} parameters ({out.model.param_dtype}), "
               f"activation {out.model.activation}, tokenizer {out.to_json()['tokenizer']}, "
               f"layers {'scanned' if out.model.scan_layers else 'unrolled'}")
    return 0

