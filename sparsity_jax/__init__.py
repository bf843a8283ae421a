"""sparsity_jax: train Transformer LMs in JAX/Flax NNX while measuring, searching and
exploiting their activation sparsity.

Sub-packages (the data flow runs down this list; `nn` and `metrics` never import TensorFlow;
a package imports only packages on lower floors, `FLOORS` in tests/test_imports.py):
  settings  the only reader of config files: frozen, validated, typed sections; `upgrade`
            reads old configs and checkpoints.
  nn        Flax NNX modules: activations, sparsity rules (the one neuron magnitude and "active
            at t"), the FFN (dense | threshold | top-k | FAT-ε | unit mask | MoE | predicted
            over one parameter set), attention, the LM.
  metrics   pure functions over arrays: activation ratio, hidden-unit use, CETT and the exact
            threshold search (a public prepared-search builder), baselines, neuron statistics,
            predictivity, hardware affinity; one home for the reductions (`reduce`).
  data      seqio tasks (local_code, text_files, c4_en, lm1b) and the batch iterator.
  runtime   what every workflow shares: mesh and logical-axis rules, the one forward pass,
            a model on its mesh, trained workdirs opened for evaluation, Orbax checkpoints,
            logged names and logs, the `Workdir` layout on any epath filesystem, device memory,
            the hardware table and TPU slices compiled for without a TPU (`hardware`).
  methods   training methods that own their host and device side (dense, dead-unit masking
            with unit tracking, SSD, SMoE, MoE-Dropout, PLD) and their FLOPs / wall-clock accounting.
  ssd       MoEfication algorithms: balanced k-means, ARI, conversion, schedule, MoE sweeps.
  train     optimizer, the jitted train step (one options object from the method), resume,
            preemption, the loop; it knows no training method by name.
  search    CETT thresholds of a model, PPL-p% over checkpoints, Pareto curves, the
            evaluate / sweep / compare workflows.
  scaling   activation-ratio scaling-law fits (Sparsing Law §4) and the paper's curves.
  predict   low-rank activation predictors (labels, training, evaluation, storage) and the
            predictivity and affinity analyses at given thresholds.
  infer     KV-cache decoding whose FFN computes only the chosen neurons.
  report    renders typed results: JSON, markdown tables, PNG figures, the run report.
  workflows what a command does, as library functions returning typed results (generation,
            the activation comparison, analyses at a target CETT, SSD sparse inference).
  commands  one module per `sparsity-jax` command (parse, validate once, call a workflow, print); cli.py
            holds the table and exit codes.
"""

from sparsity_jax.devices.hardware import no_tpu_environment, patient_host_collectives

__version__ = "0.1.0"
# Before anything here lets JAX start its backends (`devices.hardware`): libtpu (the `tpu`
# extra) must not look for a TPU nor a metadata server on a machine with none, and XLA:CPU
# must not abort when a loaded machine's fake devices reach a collective far apart.
no_tpu_environment()
patient_host_collectives()
