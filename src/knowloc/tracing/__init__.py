"""Causal tracing (Meng et al. 2022): where in the network the clean state of a query restores its answer.

:func:`trace` gives a query's indirect-effect maps over (token, layer) for the residual stream, the MLP and the
attention outputs; :func:`restored_probability` one restoration by full passes (the reference);
:mod:`knowloc.tracing.profiles` the pure maths over maps (ROME's token classes). Formulas: docs/tracing.md.
"""

from knowloc.tracing.trace import (DEFAULT_NOISE, DEFAULT_SAMPLES, DEFAULT_WINDOW, KINDS, TraceResult, TraceSettings,
                                   embedding_std, restored_probability, subject_noise, trace, window_layers)

__all__ = ["DEFAULT_NOISE", "DEFAULT_SAMPLES", "DEFAULT_WINDOW", "KINDS", "TraceResult", "TraceSettings",
           "embedding_std", "restored_probability", "subject_noise", "trace", "window_layers"]
