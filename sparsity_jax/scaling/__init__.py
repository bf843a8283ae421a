"""sparsity_jax.scaling: how the activation ratio scales with training data (Sparsing
Law §4.2, App. D, Table 2). Fits the ReLU logspace power law and the SiLU power law to
activation-ratio curves (pure numpy/scipy), compares with the paper's Table 2 on its 11
public curves (shipped in `data/`), and plots Fig. 4 and the derivative figure
(`plots`, matplotlib; import it separately).
"""
from sparsity_jax.scaling.fit import (
    NON_EMBEDDING_PARAMS, TABLE2, CurveFit, builtin_n_params, builtin_table, derivative_vs_data_ratio,
    fit_activation_curve, fit_builtin, format_table, law, law_derivative, load_builtin)

__all__ = ["NON_EMBEDDING_PARAMS", "TABLE2", "CurveFit", "builtin_n_params", "builtin_table",
           "derivative_vs_data_ratio", "fit_activation_curve", "fit_builtin", "format_table", "law",
           "law_derivative", "load_builtin"]
