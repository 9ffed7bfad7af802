"""TransformerForDiffusion (DP-T), state-dict compatible with real-stanford/diffusion_policy.

The decoder layer is written as explicit pre-LN sub-blocks (SA, CA, FFN) whose
residual deltas BAC can compute or reuse (BAC_NOTES.md, "Blocks"). Parameter
names match ``nn.TransformerDecoderLayer`` so diffusion_policy checkpoints load
unchanged, and the output matches torch's layer in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from bac_ros.bac.interface import BlockCache, BlockInfo, BlockKind, BlockObserver
from bac_ros.engine.config import TransformerConfig


class SinusoidalPosEmb(nn.Module):
    """Timestep embedding, identical to diffusion_policy's (sin half, then cos half)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=x.device) * -emb)
        emb = x[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)  # (B, dim)


class CacheableDecoderLayer(nn.Module):
    """Pre-LN decoder layer as three residual sub-blocks.

    Same parameters as ``nn.TransformerDecoderLayer(norm_first=True, batch_first=True,
    activation='gelu')``; dropout modules are kept so training matches the reference.
    """

    kinds = (BlockKind.SELF_ATTN, BlockKind.CROSS_ATTN, BlockKind.FFN)

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(
            d_model, nhead, dropout=dropout, batch_first=True
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def sa(self, x, memory, mask, memory_mask):  # (B, T, C) -> (B, T, C)
        h = self.norm1(x)
        return self.dropout1(self.self_attn(h, h, h, attn_mask=mask, need_weights=False)[0])

    def ca(self, x, memory, mask, memory_mask):
        h = self.norm2(x)
        out = self.multihead_attn(h, memory, memory, attn_mask=memory_mask, need_weights=False)
        return self.dropout2(out[0])

    def ffn(self, x, memory, mask, memory_mask):
        h = self.norm3(x)
        return self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(h)))))


class CacheableEncoderLayer(nn.Module):
    """Pre-LN encoder layer (SA, FFN), parameters as ``nn.TransformerEncoderLayer``.

    Used for diffusion_policy's encoder-only mode, so BAC applies there too.
    """

    kinds = (BlockKind.SELF_ATTN, BlockKind.FFN)

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def sa(self, x, memory, mask, memory_mask):
        h = self.norm1(x)
        return self.dropout1(self.self_attn(h, h, h, attn_mask=mask, need_weights=False)[0])

    def ffn(self, x, memory, mask, memory_mask):
        h = self.norm2(x)
        return self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(h)))))


class LayerStack(nn.Module):
    """Holds layers under ``.layers`` so keys read ``decoder.layers.{i}.*`` as in torch."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class TransformerForDiffusion(nn.Module):
    """DP-T epsilon/sample predictor; implements ``bac.interface.CacheableDenoiser``."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = cfg = config
        T, T_cond, n_emb = cfg.n_tokens, cfg.n_cond_tokens, cfg.n_emb
        # Empty parameter diffusion_policy's ModuleAttrMixin registers; kept for exact keys.
        self._dummy_variable = nn.Parameter()
        self.input_emb = nn.Linear(cfg.input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, n_emb))
        self.drop = nn.Dropout(cfg.p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cfg.cond_dim, n_emb) if cfg.obs_as_cond else None
        self.cond_pos_emb = None
        self.encoder_only = cfg.encoder_only

        def layers(cls, n):
            return LayerStack([cls(n_emb, cfg.n_head, 4 * n_emb, cfg.p_drop_attn)
                               for _ in range(n)])

        if not self.encoder_only:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, T_cond, n_emb))
            if cfg.n_cond_layers > 0:
                enc_layer = nn.TransformerEncoderLayer(
                    d_model=n_emb, nhead=cfg.n_head, dim_feedforward=4 * n_emb,
                    dropout=cfg.p_drop_attn, activation="gelu", batch_first=True,
                    norm_first=True,
                )
                self.encoder = nn.TransformerEncoder(
                    enc_layer, num_layers=cfg.n_cond_layers, enable_nested_tensor=False
                )
            else:
                self.encoder = nn.Sequential(
                    nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb)
                )
            self.decoder = layers(CacheableDecoderLayer, cfg.n_layer)
            stack = self.decoder
        else:
            self.encoder = layers(CacheableEncoderLayer, cfg.n_layer)
            self.decoder = None
            stack = self.encoder

        if cfg.causal_attn:
            mask = (torch.triu(torch.ones(T, T)) == 1).transpose(0, 1)
            mask = mask.float().masked_fill(~mask, float("-inf")).masked_fill(mask, 0.0)
            self.register_buffer("mask", mask)
            if cfg.time_as_cond and cfg.obs_as_cond:
                # Action token t sees memory tokens 0..t+1 (time token + obs up to t).
                t, s = torch.meshgrid(torch.arange(T), torch.arange(T_cond), indexing="ij")
                mmask = t >= (s - 1)
                mmask = mmask.float().masked_fill(~mmask, float("-inf")).masked_fill(mmask, 0.0)
                self.register_buffer("memory_mask", mmask)
            else:
                self.memory_mask = None
        else:
            self.mask = None
            self.memory_mask = None

        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, cfg.output_dim)

        # Block table built once: the forward loop only indexes it.
        self._blocks: list[BlockInfo] = []
        self._block_fns: list[Callable] = []
        for li, layer in enumerate(stack.layers):
            for kind in layer.kinds:
                self._blocks.append(BlockInfo(len(self._blocks), li, kind))
                self._block_fns.append(getattr(layer, kind_method(kind)))
        self.apply(self._init_weights)

    # -- BAC interface -------------------------------------------------------------------
    def blocks(self) -> list[BlockInfo]:
        return list(self._blocks)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # diffusion_policy's initialisation (std 0.02, zero biases, unit LayerNorm).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                w = getattr(module, name)
                if w is not None:
                    nn.init.normal_(w, mean=0.0, std=0.02)
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                b = getattr(module, name)
                if b is not None:
                    nn.init.zeros_(b)
        elif isinstance(module, nn.LayerNorm):
            nn.init.zeros_(module.bias)
            nn.init.ones_(module.weight)
        elif isinstance(module, TransformerForDiffusion):
            nn.init.normal_(module.pos_emb, mean=0.0, std=0.02)
            if module.cond_pos_emb is not None:
                nn.init.normal_(module.cond_pos_emb, mean=0.0, std=0.02)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        cond: Optional[torch.Tensor] = None,
        cache: Optional[BlockCache] = None,
        observer: Optional[BlockObserver] = None,
    ) -> torch.Tensor:
        """sample (B, T, input_dim), timestep (B,) or scalar, cond (B, To, cond_dim)."""
        B = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        elif timestep.dim() == 0:
            timestep = timestep[None].to(sample.device)
        input_emb = self.input_emb(sample)  # (B, T, n_emb)

        if self.encoder_only:
            x = self._time_tokens(timestep.expand(B), input_emb, sample.dtype)
            x = self._run_blocks(x, None, cache, observer)
            x = x[:, 1:, :]
        else:
            memory = None
            # Only cross-attention reads the memory: on a step where the cache reuses every
            # cross-attention block, the condition encoder is skipped (exact: nothing reads it).
            computes_kind = getattr(cache, "computes_kind", None)
            if computes_kind is None or observer is not None or \
                    computes_kind(BlockKind.CROSS_ATTN):
                memory = self._memory(timestep.expand(B), cond, sample.dtype)
            x = self.drop(input_emb + self.pos_emb[:, : input_emb.shape[1], :])
            x = self._run_blocks(x, memory, cache, observer)
        return self.head(self.ln_f(x))  # (B, T, output_dim)

    def _time_tokens(self, timestep: torch.Tensor, input_emb: torch.Tensor, dtype
                     ) -> torch.Tensor:
        """Encoder-only mode's input: the time token before the action tokens, positions
        added. ``timestep`` is (B,); ``dtype`` is the sample's."""
        time_emb = self.time_emb(timestep).unsqueeze(1).to(dtype)
        tokens = torch.cat([time_emb, input_emb], dim=1)  # (B, T+1, n_emb)
        return self.drop(tokens + self.pos_emb[:, : tokens.shape[1], :])

    def _memory(self, timestep: torch.Tensor, cond: Optional[torch.Tensor], dtype) -> torch.Tensor:
        """The condition encoder's output (time token + observation tokens), read only by
        cross-attention. ``timestep`` is (B,)."""
        cond_emb = self.time_emb(timestep).unsqueeze(1).to(dtype)  # (B, 1, n_emb)
        if self.cond_obs_emb is not None:
            cond_emb = torch.cat([cond_emb, self.cond_obs_emb(cond)], dim=1)  # (B, Tc, C)
        return self.encoder(self.drop(cond_emb + self.cond_pos_emb[:, : cond_emb.shape[1]]))

    def forward_masked(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        cond: Optional[torch.Tensor],
        mask: tuple[bool, ...],
        cached: Sequence[Optional[torch.Tensor]],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` with a fixed compute mask: block b computes where ``mask[b]``, else
        adds ``cached[b]``. Pure (no cache object, no Python state), so ``torch.compile`` turns
        each distinct mask of a static schedule into one graph (``bac.compiled``). Returns the
        output and the outputs of the computed blocks, in block order."""
        B = sample.shape[0]
        timestep = timestep.reshape(1).expand(B)
        input_emb = self.input_emb(sample)
        memory = None
        if self.encoder_only:
            x = self._time_tokens(timestep, input_emb, sample.dtype)
        else:
            if any(m for m, info in zip(mask, self._blocks) if info.kind == BlockKind.CROSS_ATTN):
                memory = self._memory(timestep, cond, sample.dtype)
            x = self.drop(input_emb + self.pos_emb[:, : input_emb.shape[1], :])
        computed = []
        for b, fn in enumerate(self._block_fns):
            if mask[b]:
                delta = fn(x, memory, self.mask, self.memory_mask)
                computed.append(delta)
            else:
                delta = cached[b]
            x = x + delta
        if self.encoder_only:
            x = x[:, 1:, :]
        return self.head(self.ln_f(x)), computed

    def _run_blocks(self, x, memory, cache, observer):
        mask, memory_mask = self.mask, self.memory_mask
        if cache is None and observer is None:  # the plain path: no per-block checks
            for fn in self._block_fns:
                x = x + fn(x, memory, mask, memory_mask)
            return x
        reused_total = getattr(cache, "reused_total", None) if observer is None else None
        total = reused_total() if reused_total is not None else None
        if total is not None:  # no block computes at this step: add the cached sum once
            return x + total
        for b, fn in enumerate(self._block_fns):
            if cache is None or cache.should_compute(b):
                delta = fn(x, memory, mask, memory_mask)
                if cache is not None:
                    cache.store(b, delta)
                if observer is not None:
                    observer(b, delta)
            else:
                delta = cache.load(b)
            x = x + delta
        return x

    def get_optim_groups(self, weight_decay: float = 1e-3) -> list[dict]:
        """AdamW groups as diffusion_policy: no decay for biases, norms, embeddings."""
        decay, no_decay = set(), set()
        for mn, m in self.named_modules():
            for pn, _ in m.named_parameters(recurse=False):
                fpn = f"{mn}.{pn}" if mn else pn
                if pn.endswith("bias") or isinstance(m, (nn.LayerNorm, nn.Embedding)):
                    no_decay.add(fpn)
                elif pn.endswith("weight") and isinstance(m, (nn.Linear, nn.MultiheadAttention)):
                    decay.add(fpn)
                else:
                    no_decay.add(fpn)
        params = dict(self.named_parameters())
        return [
            {"params": [params[n] for n in sorted(decay)], "weight_decay": weight_decay},
            {"params": [params[n] for n in sorted(no_decay - decay)], "weight_decay": 0.0},
        ]


def kind_method(kind: BlockKind) -> str:
    return {BlockKind.SELF_ATTN: "sa", BlockKind.CROSS_ATTN: "ca", BlockKind.FFN: "ffn"}[kind]
