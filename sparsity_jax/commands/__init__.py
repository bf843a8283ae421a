"""The `sparsity-jax` commands, one module each with `add_parser(sub)` and `run(args)`;
`TAKES_CONFIG` says whether it takes `--config FILE` and `--config.a.b=V` overrides."""
