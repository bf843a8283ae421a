"""What every workflow shares, below `train`, `search`, `predict`, `infer`, `report` and
`methods`: the mesh and logical-axis rules (`sharding`), the one forward pass with its
loss and records (`forward`), a model placed on a mesh (`model`), a trained workdir opened
for evaluation (`trained`), Orbax checkpoints (`checkpoint`), the logged-name vocabulary
(`names`), metrics logs (`logs`), the `Workdir` layout on any epath filesystem
(`workdir`), device memory (`memory`), multi-process start-up (`distributed`) and the
accelerators: chips, TPU slices and their compile-only devices (`hardware`)."""
