"""sparsity_jax: train Transformer LMs in JAX/Flax NNX while measuring, searching and
exploiting their activation sparsity.

Sub-packages (the data flow runs down this list; `nn` and `metrics` never import TensorFlow):
  settings  the only reader of config files: frozen, validated, typed sections.
  nn        Flax NNX modules: activations, sparsity rules, the FFN (dense | threshold | top-k |
            FAT-ε | unit mask | MoE | predicted over one parameter set), attention, the LM.
  metrics   pure functions over arrays: activation ratio, hidden-unit use, CETT and the exact
            threshold search, baselines, neuron statistics, predictivity, hardware affinity.
  data      seqio tasks (local_code, text_files, c4_en, lm1b) and the batch iterator.
  methods   training methods behind one interface (dense, dead-unit masking, SSD, SMoE,
            MoE-Dropout, PLD) and their FLOPs / wall-clock accounting.
  ssd       MoEfication algorithms: balanced k-means, ARI, conversion, schedule, sparse inference.
  train     mesh and sharding rules, optimizer, jitted steps, checkpoints, logs, workdirs, the loop.
  search    CETT thresholds of a model, PPL-p% over checkpoints, Pareto curves.
  scaling   activation-ratio scaling-law fits (Sparsing Law §4) and the paper's curves.
  predict   low-rank activation predictors: labels at a CETT, training, evaluation, storage.
  infer     KV-cache decoding whose FFN computes only the chosen neurons.
  report    JSON + PNG reports of every kind.
  commands  one module per `sparsity-jax` command; cli.py holds the table and exit codes.
"""

__version__ = "0.1.0"
