"""Which dtype a reduction runs in: float32 at least, whatever the model's dtype.

The paper's models are bf16 checkpoints. bf16 keeps 8 mantissa bits: a sum, mean or logit rounded to
bf16 is off by up to ~0.4% of its size, which is as large as the differences medinterp measures
(a block's mean output is a small difference of two residual means; a lesion's log-prob drop is a
small difference of two log-probs). So the model runs in its own dtype, and everything that feeds a
statistic (span means of activations, logits and log-probs, saliency's gradient sums, mean-ablation
references) is reduced in :func:`reduction_dtype` of it.

Example:
    >>> import torch
    >>> y = torch.full((4096,), 1.0078125, dtype=torch.bfloat16); y[0] = 3.0   # one outlier among 4096
    >>> float(y.mean()), round(float(y.to(reduction_dtype(y.dtype)).mean()), 6)  # bf16 loses the outlier
    (1.0078125, 1.008299)
"""

from __future__ import annotations

import torch


def is_low_precision(dtype: torch.dtype) -> bool:
    """True for floating dtypes narrower than float32 (bfloat16, float16): reductions over them are upcast.

    Example:
        >>> is_low_precision(torch.bfloat16), is_low_precision(torch.float32), is_low_precision(torch.long)
        (True, False, False)
    """
    return dtype.is_floating_point and torch.finfo(dtype).bits < 32


def reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a reduction over values of ``dtype`` runs in: float32 for bf16 / fp16, else ``dtype`` itself.

    Example:
        >>> reduction_dtype(torch.bfloat16), reduction_dtype(torch.float32), reduction_dtype(torch.float64)
        (torch.float32, torch.float32, torch.float64)
    """
    return torch.float32 if is_low_precision(dtype) else dtype


__all__ = ["is_low_precision", "reduction_dtype"]
