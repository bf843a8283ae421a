"""Default config: a tiny byte-level ReLU LM on the embedded `local_code` corpus.

Runs offline on 2 CPU cores in a few minutes (`make demo`). Every paper config starts
from this one and overrides what differs. Override any field on the command line:
`sparsity-jax train --config configs/default.py --config.model.num_layers=6`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(
        vocab_size=0,          # 0 = take it from the data vocabulary
        d_model=128, num_layers=4, num_heads=4, num_kv_heads=0, d_ff=512,
        activation="relu", fat_eps=0.0, tie_embeddings=True,
        mlp_init="lecun_normal", init_std=0.02, rope_theta=10000.0,
        dtype="float32",       # compute dtype; "bfloat16" on TPU/GPU
    ))

    c.data = ml_collections.ConfigDict(dict(
        task="local_code",     # local_code | text_files | c4_en | lm1b
        vocab="byte",          # byte | sentencepiece
        spm_path="", spm_vocab_size=4096,
        text_glob="", text_field="text",
        num_shards=8,          # virtual shards: global batches are identical for any process count dividing it
        shuffle_buffer=1000, seed=0, val_permille=20, max_files=0,
    ))

    c.train = ml_collections.ConfigDict(dict(
        steps=300, global_batch_size=32, seq_len=128, grad_accum=1,
        log_every=25, eval_every=100, eval_batches=8,
        checkpoint_every=100, keep_checkpoints=3, async_checkpoints=True,
        record="mask",         # what the FFNs record during training: none | mask | scores | both
        metrics_every=50,      # per-layer hidden-unit use + percentiles every N steps (0 = off)
        record_threshold=0.0,  # used = |a|·‖W_out,i‖ > t (0: a != 0, for exact-zero activations)
        metrics_batch_groups=1,  # "per-batch" granularity: 1 = global batch, -1 = per device (paper)
    ))

    # Dead-unit masking (layer-patterns §4.1): at step S mask units unused over the last
    # `window` batches for the rest of training; `random` masks as many random units.
    c.unit_mask = ml_collections.ConfigDict(dict(at_step=0, window=1, random=False))

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=3e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
        schedule="cosine",     # constant | cosine | wsd | noam
        warmup_steps=20, min_lr_ratio=0.1, decay_fraction=0.1,
    ))

    # SSD (switchable sparse-dense training, SSD §4) and its baselines (SSD §5, App. A):
    # method = dense | ssd | smoe | moe_dropout | pld (sparsity_jax/ssd/baselines.py).
    # num_experts / top_k: N and K of ssd's sparse phase and of smoe; N and K0 of moe_dropout.
    # router_grad: true keeps SSD App. A's straight-through router gradient (gates 1 + α − sg(α))
    # in the MoE steps; false (default) uses constant gates, so K = N is exactly the dense step.
    # The gradient has no forward counterpart and made every MoE step here diverge, SSD's
    # sparse phases included (nn/moe.py has the numbers).
    c.ssd = ml_collections.ConfigDict(dict(
        method="dense", num_experts=32, top_k=6, monitor_every=3000, ari_threshold=0.9,
        sparse_share=0.5, final_dense_share=0.1, dispatch="capacity", capacity_factor=1.25, kmeans_iters=50,
        pld_drop_rate=0.25, pld_gamma=0.001, router_grad=False,
    ))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
