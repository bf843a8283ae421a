"""A Hugging Face `config.json` read as this project's `ModelConfig`, or refused.

Families (`model_type`): llama (1/2/3/3.1+, GQA, `rope_scaling` linear / llama3),
mistral (sliding window), qwen2 (q/k/v biases), qwen3 (q/k RMSNorm, explicit head_dim),
gemma (GeGLU with tanh GELU, RMSNorm (1 + w), embeddings × √d in the compute dtype),
gemma3_text (Gemma's, plus q/k RMSNorm, norms after attention and FFN too, scores ×
1/√query_pre_attn_scalar, `layer_types` of sliding-window local layers with their own
unscaled RoPE base and global ones with `rope_theta` and its scaling) and
minicpm (embeddings × scale_emb, residual updates × scale_depth / √L, logits of
h / (hidden_size / dim_model_base), tied head). The FFN is gated in all of them; its
activation follows `hidden_act`: silu → swiglu, relu → reglu (ReluLLaMA, MiniCPM-S),
fatrelu + hidden_act_param → fatreglu (ProSparse), relu2 → relu2glu, drelu → drelu
(TurboSparse), gelu_pytorch_tanh → geglu. Anything else that changes the math (another
family or activation, a RoPE type, biases we do not model, soft-capping, ...) is a
`UserError` naming it: nothing is silently ignored.
"""
from __future__ import annotations

import dataclasses
import math

from sparsity_jax.errors import UserError
from sparsity_jax.nn.model import ModelConfig

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text", "minicpm")
GEMMA3_LAYERS = {"sliding_attention": "L", "full_attention": "G"}
HIDDEN_ACTS = {"silu": "swiglu", "swish": "swiglu", "relu": "reglu", "fatrelu": "fatreglu", "relu2": "relu2glu",
               "drelu": "drelu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu"}
# our gated activation → the hidden_act an exported config.json names
EXPORT_ACTS = {"swiglu": "silu", "reglu": "relu", "relu2glu": "relu2", "geglu": "gelu_pytorch_tanh",
               "fatreglu": "fatrelu", "drelu": "drelu"}
ROPE_TYPES = {None: "none", "default": "none", "linear": "linear", "llama3": "llama3"}
# keys that change the math when set (truthy / not the neutral value) and that no family here models
REFUSED = ("attention_bias", "mlp_bias", "attn_logit_softcapping", "final_logit_softcapping",
           "query_pre_attn_scalar", "use_bidirectional_attention", "use_sliding_window")


def _fail(what: str) -> UserError:
    return UserError(f"{what}; this importer supports model_type {', '.join(FAMILIES)}.")


def rope(hf: dict) -> dict:
    """RoPE θ and scaling of a config (transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling`) as ModelConfig fields; unsupported types refused."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    spec = scaling or params
    kind = spec.get("rope_type", spec.get("type"))
    if kind not in ROPE_TYPES:
        raise UserError(f"rope type {kind!r} (config.json rope_scaling / rope_parameters) is not supported; "
                        f"supported: default, linear, llama3.")
    if spec.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UserError("config.json sets partial_rotary_factor != 1, which this importer does not model.")
    out = {"rope_theta": theta, "rope_scaling": ROPE_TYPES[kind]}
    if kind in ("linear", "llama3"):
        out["rope_factor"] = float(spec["factor"])
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(spec.get("low_freq_factor", 1.0)),
                   rope_high_freq_factor=float(spec.get("high_freq_factor", 4.0)),
                   rope_original_max_len=int(spec["original_max_position_embeddings"]))
    return out


def gemma3(hf: dict, layers: int, head_dim: int) -> dict:
    """ModelConfig fields of a gemma3_text config: per-layer types (`layer_types`, else
    every `sliding_window_pattern`-th layer global), the global RoPE (`rope_parameters`
    ["full_attention"] or rope_theta + rope_scaling) and the local base (unscaled)."""
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % int(hf.get("sliding_window_pattern", 6))
                                      else "full_attention" for i in range(layers)]
    if len(types) != layers:
        raise UserError(f"config.json lists {len(types)} layer_types for {layers} layers; fix one of the two.")
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:
        glob, loc = dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    else:
        glob = {"rope_theta": hf.get("rope_theta", 1e6), **(hf.get("rope_scaling") or {})}
        loc = {"rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    if loc.get("rope_type", "default") != "default":
        raise UserError(f"config.json scales the local layers' RoPE ({loc['rope_type']!r}), which this importer does "
                        "not model; only the global layers' RoPE may be scaled.")
    window = hf.get("sliding_window", 4096) if "sliding_attention" in types else 0
    return dict(rope({"rope_parameters": glob}), layer_types="".join(GEMMA3_LAYERS[t] for t in types),
                sliding_window=int(window or 0), rope_local_theta=float(loc.get("rope_theta", 10000.0)),
                query_scalar=float(hf.get("query_pre_attn_scalar", 256)), qk_norm=True, post_norms=True)


def activation(hf: dict) -> tuple[str, float]:
    """(our gated activation, its FATReLU threshold) of `hidden_act` (Gemma: its
    `hidden_activation`, and its trained tanh GELU when the config says plain gelu)."""
    act = hf.get("hidden_act")
    if hf["model_type"] in ("gemma", "gemma3_text"):
        act = hf.get("hidden_activation") or act
        act = "gelu_pytorch_tanh" if act in (None, "gelu") else act
    if act not in HIDDEN_ACTS:
        raise UserError(f"hidden_act {act!r} in config.json is not supported; supported: "
                        f"{', '.join(sorted(HIDDEN_ACTS))}.")
    eps = float(hf.get("hidden_act_param", 0.0) or 0.0) if act == "fatrelu" else 0.0
    return HIDDEN_ACTS[act], eps


def model_config(hf: dict, dtype: str = "float32") -> ModelConfig:
    """The `ModelConfig` of a parsed HF `config.json` with compute and parameter dtype
    `dtype`; UserError for anything this project cannot reproduce exactly."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise _fail(f"model_type {family!r} in config.json is not supported")
    for key in REFUSED:
        if hf.get(key) and not (family == "gemma3_text" and key == "query_pre_attn_scalar"):
            raise UserError(f"config.json sets {key}={hf[key]!r}, which this importer does not model; "
                            "only checkpoints without it load exactly.")
    kinds = set(hf.get("layer_types") or ()) - {"full_attention", "sliding_attention" if family in (
        "mistral", "gemma3_text") else ""}
    if kinds:
        raise UserError(f"config.json has layer_types {sorted(kinds)}, which this importer does not model for "
                        f"{family}; only full attention (Mistral: its sliding window) loads exactly.")
    try:
        d, heads, layers = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
        fields = dict(vocab_size=int(hf["vocab_size"]), d_model=d, num_layers=layers, num_heads=heads,
                      d_ff=int(hf["intermediate_size"]))
    except KeyError as e:
        raise UserError(f"config.json has no {e.args[0]!r}; it is not a decoder-only LM config.") from None
    kv = int(hf.get("num_key_value_heads") or heads)
    head_dim = int(hf.get("head_dim") or d // heads)
    act, fat_eps = activation(hf)
    tie_default = family in ("gemma", "gemma3_text", "minicpm")
    fields.update(num_kv_heads=0 if kv == heads else kv, head_dim=0 if head_dim * heads == d else head_dim,
                  activation=act, fat_eps=fat_eps, tie_embeddings=bool(hf.get("tie_word_embeddings", tie_default)),
                  norm_eps=float(hf.get("rms_norm_eps", 1e-6)), dtype=dtype, param_dtype=dtype)
    fields.update(gemma3(hf, layers, head_dim) if family == "gemma3_text" else rope(hf))
    if family == "qwen2":
        fields["qkv_bias"] = True
    if family == "qwen3":
        fields["qk_norm"] = True
    if family == "mistral" and hf.get("sliding_window"):
        fields["sliding_window"] = int(hf["sliding_window"])
    if family in ("gemma", "gemma3_text"):
        fields.update(norm_offset=1.0, embed_scale=math.sqrt(d))
    if family == "minicpm":
        fields.update(embed_scale=float(hf.get("scale_emb", 1.0)),
                      residual_scale=float(hf.get("scale_depth", 1.0)) / math.sqrt(layers),
                      logit_scale=float(hf.get("dim_model_base", d)) / d)
    try:
        return ModelConfig(**fields).validate()
    except ValueError as e:
        raise UserError(f"config.json gives an impossible model ({e}).") from None


def hf_config(cfg: ModelConfig, dtype: str) -> dict:
    """The `config.json` of an exported model: a Llama (MiniCPM, Gemma, Qwen when their
    options are set) that transformers loads; UserError for a non-gated FFN."""
    if cfg.activation not in EXPORT_ACTS:
        raise UserError(f"model.activation={cfg.activation!r} is a non-gated FFN, for which transformers has no "
                        "stock class; export works for gated models (swiglu, reglu, geglu, relu2glu, ...).")
    gemma3 = bool(cfg.post_norms or cfg.layer_types or cfg.query_scalar or cfg.rope_local_theta)
    family = ("minicpm" if cfg.residual_scale != 1 or cfg.logit_scale != 1 else "gemma3_text" if gemma3
              else "gemma" if cfg.norm_offset else "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias
              else "mistral" if cfg.sliding_window else "llama")
    if family.startswith("gemma") and (cfg.activation != "geglu" or abs(cfg.embed_scale - math.sqrt(cfg.d_model)) > 1e-6
                                       or cfg.norm_offset != 1):
        raise UserError(f"a model with RMSNorm (1 + w) or Gemma 3's options exports only as {family}, which needs "
                        "geglu, RMSNorm (1 + w) and embed_scale √d.")
    if family == "gemma3_text" and not (cfg.post_norms and cfg.qk_norm and cfg.layer_types):
        raise UserError("Gemma 3's options export only together: model.post_norms, model.qk_norm and "
                        "model.layer_types.")
    if family not in ("minicpm", "gemma", "gemma3_text") and cfg.embed_scale != 1:
        raise UserError(f"model.embed_scale={cfg.embed_scale} has no place in a {family} config.json.")
    if cfg.qkv_bias and family != "qwen2":
        raise UserError("q/k/v biases export only as Qwen2 (without q/k norm or other scales).")
    rope_params = {"rope_type": "default" if cfg.rope_scaling == "none" else cfg.rope_scaling,
                   "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != "none":
        rope_params["factor"] = cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        rope_params.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                           original_max_position_embeddings=cfg.rope_original_max_len)
    arch = {"minicpm": "MiniCPMForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}.get(
        family, f"{family.capitalize()}ForCausalLM")
    out = {"model_type": family, "architectures": [arch],
           "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
           "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.heads_dim, "hidden_act": EXPORT_ACTS[cfg.activation],
           "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "rope_parameters": rope_params,
           "rope_theta": cfg.rope_theta, "max_position_embeddings": max(cfg.rope_original_max_len, 2048),
           "dtype": dtype, "attention_bias": False, "mlp_bias": False}
    if cfg.activation == "fatreglu":
        out["hidden_act_param"] = cfg.fat_eps
    if family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if family == "gemma3_text":
        local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
        out.update(hidden_activation=out.pop("hidden_act"),
                   query_pre_attn_scalar=_number(cfg.query_scalar or cfg.heads_dim),
                   sliding_window=cfg.sliding_window or 4096,
                   rope_parameters={"full_attention": rope_params, "sliding_attention": local},
                   layer_types=[{"L": "sliding_attention", "G": "full_attention"}[c] for c in cfg.layer_types])
        out.pop("rope_theta")
    if family == "minicpm":
        out.update(scale_emb=cfg.embed_scale, scale_depth=cfg.residual_scale * math.sqrt(cfg.num_layers),
                   dim_model_base=cfg.logit_scale * cfg.d_model)
    return out


def _number(x: float) -> int | float:
    """An integral float as int (transformers' strict config types want Gemma 3's scalar an int)."""
    return int(x) if float(x).is_integer() else x


def same_math(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two configs describe the same function (dtypes and how the blocks run aside:
    `remat`, `scan_layers`)."""
    strip = dict(dtype="float32", param_dtype="float32", remat="none", scan_layers=False)
    return dataclasses.replace(a, **strip) == dataclasses.replace(b, **strip)
