"""Default config: a tiny byte-level ReLU LM on the embedded `local_code` corpus.

Runs offline on 2 CPU cores in a few minutes (`make demo`). Every paper config starts
from this one and overrides what differs. The fields, their types, defaults and
meaning are the dataclasses of `sparsity_jax/settings/schema.py` (model: `nn.ModelConfig`;
`data.tfds_data_dir` points c4_en / lm1b at prepared TFDS datasets). Override any field
on the command line: `sparsity-jax train --config configs/default.py --config.model.num_layers=6`.
"""
from sparsity_jax.settings import default_config


def get_config():
    return default_config()
