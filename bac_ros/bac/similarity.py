"""Per-block feature similarity and caching error (BAC_NOTES.md, "ACS" and "BUA" step 1)."""

from __future__ import annotations

import torch


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """features (N, K, D) for one block -> (K, K) cosine similarity averaged over N samples."""
    f = features.double().flatten(2)  # (N, K, D)
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("nkd,nld->nkl", f, f).mean(0)  # (K, K)


def caching_error(features: torch.Tensor) -> torch.Tensor:
    """err_b: mean over step pairs (i != j) of mean |X[i] - X[j]|, averaged over samples."""
    f = features.double().flatten(2)  # (N, K, D)
    N, K, D = f.shape
    if K < 2:
        return torch.zeros((), dtype=torch.float64)
    # L1 distance for all pairs: (N, K, K); cdist with p=1 sums |.|, divide by D for the mean.
    d = torch.cdist(f, f, p=1) / D
    return d.sum(dim=(1, 2)).mean() / (K * (K - 1))
