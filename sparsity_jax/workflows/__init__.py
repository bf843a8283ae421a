"""What a command does, as library functions returning typed results: a notebook calls
these, and each command parses its arguments, calls one and prints.

  generation        KV-cache decoding of a checkpoint with a dense / threshold / predicted
                    FFN (`generate` → `Generated`)
  evaluation        every checkpoint of a run: loss, perplexity, activation ratio, and at
                    PPL-p% (`evaluate_run` → `Evaluation`; `sparsity-jax evaluate`)
  ppl_sweep         PPL-p% sparsity of every checkpoint (stabilised), Pareto curves and
                    neuron statistics (`ppl_of_run` → `PplSweep`; `sparsity-jax ppl`)
  comparison        train a family of models and compare their sparsity (`compare`)
  at_cett           a checkpoint's thresholds for a target CETT (`thresholds_at_cett` →
                    `CheckpointThresholds`), predictors and affinity at them
                    (`predictivity_of_checkpoint` → `predict.Predictivity`,
                    `affinity_at_cett` → `predict.Affinity`)
  importing         an HF directory or GGUF file as a new run directory
                    (`import_checkpoint` → `ImportedRun`; `sparsity-jax import`)
  export            a run's checkpoint restored for `export --hf` (`saved_model`)
  ssd_inference     SSD's sparse inference of a checkpoint at k = 1 … N experts
                    (`sparse_inference` → `SparseInference`)

A workflow composes the capability packages below it (search, predict, infer, methods,
train, ssd); they never import a workflow.
"""
from sparsity_jax.workflows.at_cett import (
    CheckpointThresholds, affinity_at_cett, predictivity_of_checkpoint, thresholds_at_cett,
)
from sparsity_jax.workflows.comparison import compare
from sparsity_jax.workflows.evaluation import Evaluation, evaluate_checkpoints, evaluate_run
from sparsity_jax.workflows.generation import Generated, generate
from sparsity_jax.workflows.importing import ImportedRun, import_checkpoint
from sparsity_jax.workflows.ppl_sweep import PplSweep, check_sweep, ppl_of_run
from sparsity_jax.workflows.ssd_inference import SparseInference, sparse_inference

__all__ = ["CheckpointThresholds", "Evaluation", "Generated", "ImportedRun", "PplSweep", "SparseInference",
           "affinity_at_cett", "check_sweep", "compare", "evaluate_checkpoints", "evaluate_run", "generate",
           "import_checkpoint", "ppl_of_run", "predictivity_of_checkpoint", "sparse_inference", "thresholds_at_cett"]
