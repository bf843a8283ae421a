"""What every workflow shares of a run, below `train`, `search`, `predict`, `infer`,
`report` and `methods`: the one forward pass with its loss and records (`forward`), a model
placed on a mesh (`model_run`), a trained workdir opened for evaluation (`trained`), Orbax
checkpoints (`checkpoint`) restoring into either block layout (`block_stacking`), the
logged-name vocabulary (`names`), metrics logs (`logs`) and the `Workdir` layout on any
epath filesystem (`workdir`). The machine itself (mesh, hardware, memory) is `devices`."""
