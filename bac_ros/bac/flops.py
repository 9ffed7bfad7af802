"""FLOPs per block and per chunk for a DP-T config (multiply-add = 2 FLOPs).

Used for the schedule file's expected FLOPs ratio; counts matmuls only (the
parts that dominate: projections, attention scores/values, FFN).
"""

from __future__ import annotations

from bac_ros.bac.interface import BlockInfo, BlockKind


def block_flops(blocks: list[BlockInfo], n_emb: int, n_tokens: int, n_cond_tokens: int) -> list[int]:
    C, T, Tc = n_emb, n_tokens, n_cond_tokens
    per_kind = {
        BlockKind.SELF_ATTN: 2 * (4 * T * C * C + 2 * T * T * C),
        BlockKind.CROSS_ATTN: 2 * (2 * T * C * C + 2 * Tc * C * C + 2 * T * Tc * C),
        BlockKind.FFN: 2 * (2 * T * C * 4 * C),
    }
    return [per_kind[b.kind] for b in blocks]


def fixed_flops(n_emb: int, n_tokens: int, n_cond_tokens: int, input_dim: int,
                output_dim: int, cond_dim: int) -> int:
    """Always-computed parts per model call: embeddings, condition MLP, head."""
    C, T, Tc = n_emb, n_tokens, n_cond_tokens
    return 2 * (T * input_dim * C + Tc * cond_dim * C + Tc * 8 * C * C + T * C * output_dim)


def model_flops(model) -> tuple[list[int], int]:
    """(per-block FLOPs, fixed FLOPs per call) for a TransformerForDiffusion."""
    cfg = model.config
    blocks = model.blocks()
    n_tokens = cfg.n_tokens
    return (block_flops(blocks, cfg.n_emb, n_tokens, max(cfg.n_cond_tokens, 1)),
            fixed_flops(cfg.n_emb, n_tokens, cfg.n_cond_tokens, cfg.input_dim, cfg.output_dim,
                        cfg.cond_dim))
