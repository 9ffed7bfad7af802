"""TransformerForDiffusion: reference-compatible names, torch-equivalent layers, BAC blocks."""

import pytest
import torch
import torch.nn as nn

from bac_ros.bac.interface import BlockKind
from bac_ros.engine.config import TransformerConfig
from bac_ros.engine.model import CacheableDecoderLayer, TransformerForDiffusion


def test_decoder_layer_matches_torch():
    """Our SA/CA/FFN sub-blocks equal nn.TransformerDecoderLayer(norm_first=True) in eval."""
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(64, 4, 256, dropout=0.1, activation="gelu",
                                     batch_first=True, norm_first=True).eval()
    ours = CacheableDecoderLayer(64, 4, 256, 0.1).eval()
    ours.load_state_dict(ref.state_dict())
    x, mem = torch.randn(3, 10, 64), torch.randn(3, 3, 64)
    mask = nn.Transformer.generate_square_subsequent_mask(10)
    mmask = torch.zeros(10, 3)
    mmask[:2, 2] = float("-inf")
    with torch.no_grad():
        want = ref(x, mem, tgt_mask=mask, memory_mask=mmask)
        got = x
        for fn in (ours.sa, ours.ca, ours.ffn):
            got = got + fn(got, mem, mask, mmask)
    assert (want - got).abs().max().item() <= 1e-5


def test_state_dict_names_match_diffusion_policy():
    """Parameter names are those of diffusion_policy's TransformerForDiffusion."""
    m = TransformerForDiffusion(TransformerConfig(input_dim=2, output_dim=2, horizon=16,
                                                  n_obs_steps=2, cond_dim=20, n_layer=2,
                                                  n_emb=32))
    keys = set(m.state_dict())
    for k in ["_dummy_variable", "pos_emb", "cond_pos_emb", "mask", "memory_mask",
              "input_emb.weight", "cond_obs_emb.weight", "encoder.0.weight", "encoder.2.bias",
              "decoder.layers.1.self_attn.in_proj_weight",
              "decoder.layers.1.multihead_attn.out_proj.weight", "decoder.layers.0.linear1.weight",
              "decoder.layers.0.linear2.bias", "decoder.layers.0.norm3.weight", "ln_f.weight",
              "head.weight"]:
        assert k in keys, k
    assert m.memory_mask.shape == (16, 3)
    # action token t sees memory tokens 0..t+1
    assert torch.isinf(m.memory_mask[0, 2]) and m.memory_mask[1, 2] == 0


def test_encoder_mode_matches_torch_encoder():
    """n_cond_layers > 0 uses torch's own TransformerEncoder under the same key names."""
    m = TransformerForDiffusion(TransformerConfig(input_dim=2, output_dim=2, horizon=8,
                                                  n_obs_steps=2, cond_dim=4, n_layer=1,
                                                  n_emb=32, n_cond_layers=2))
    assert "encoder.layers.1.self_attn.in_proj_weight" in m.state_dict()
    out = m(torch.randn(2, 8, 2), torch.tensor([3, 5]), torch.randn(2, 2, 4))
    assert out.shape == (2, 8, 2)


@pytest.mark.parametrize("time_as_cond", [True, False])
def test_block_table(time_as_cond):
    """Decoder exposes SA/CA/FFN per layer; encoder-only exposes SA/FFN."""
    cfg = TransformerConfig(input_dim=4, output_dim=2, horizon=8, n_obs_steps=2,
                            cond_dim=4 if time_as_cond else 0, n_layer=3, n_emb=32,
                            time_as_cond=time_as_cond)
    m = TransformerForDiffusion(cfg).eval()
    blocks = m.blocks()
    per_layer = 3 if time_as_cond else 2
    assert len(blocks) == 3 * per_layer
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert blocks[-1].kind is BlockKind.FFN and blocks[-1].layer == 2
    cond = torch.randn(1, 2, 4) if time_as_cond else None
    assert m(torch.randn(1, 8, 4), 7, cond).shape == (1, 8, 2)


def test_observer_sees_every_block_and_does_not_change_output():
    """The observer path gives the same output and one delta per block."""
    m = TransformerForDiffusion(TransformerConfig(input_dim=2, output_dim=2, horizon=8,
                                                  n_obs_steps=2, cond_dim=4, n_layer=2,
                                                  n_emb=32)).eval()
    x, c = torch.randn(1, 8, 2), torch.randn(1, 2, 4)
    seen = []
    with torch.no_grad():
        a = m(x, 10, c)
        b = m(x, 10, c, observer=lambda i, d: seen.append((i, d.shape)))
    assert torch.equal(a, b)
    assert [i for i, _ in seen] == list(range(6))


def _reference_forward(m: TransformerForDiffusion, sample, t, cond):
    """diffusion_policy's TransformerForDiffusion.forward with torch's own decoder/encoder."""
    cfg = m.config
    layer_cls = nn.TransformerEncoderLayer if m.encoder_only else nn.TransformerDecoderLayer
    ref = layer_cls(cfg.n_emb, cfg.n_head, 4 * cfg.n_emb, dropout=0.0, activation="gelu",
                    batch_first=True, norm_first=True)
    stack_cls = nn.TransformerEncoder if m.encoder_only else nn.TransformerDecoder
    extra = {"enable_nested_tensor": False} if m.encoder_only else {}
    stack = stack_cls(ref, num_layers=cfg.n_layer, **extra).eval()
    ours = m.encoder if m.encoder_only else m.decoder
    stack.load_state_dict(ours.state_dict())
    time_emb = m.time_emb(t.expand(sample.shape[0])).unsqueeze(1)
    input_emb = m.input_emb(sample)
    if m.encoder_only:
        x = torch.cat([time_emb, input_emb], dim=1) + m.pos_emb[:, : input_emb.shape[1] + 1]
        return m.head(m.ln_f(stack(x, mask=m.mask)[:, 1:]))
    c = time_emb
    if cfg.obs_as_cond:
        c = torch.cat([c, m.cond_obs_emb(cond)], dim=1)
    memory = m.encoder(c + m.cond_pos_emb[:, : c.shape[1]])
    x = input_emb + m.pos_emb[:, : input_emb.shape[1]]
    x = stack(tgt=x, memory=memory, tgt_mask=m.mask, memory_mask=m.memory_mask)
    return m.head(m.ln_f(x))


@pytest.mark.parametrize("opts", [
    dict(causal_attn=True, n_cond_layers=0),
    dict(causal_attn=False, n_cond_layers=0),
    dict(causal_attn=True, n_cond_layers=2),
    dict(causal_attn=True, time_as_cond=False, cond_dim=0),  # encoder-only
    dict(causal_attn=False, time_as_cond=True, cond_dim=0),  # time-only memory
])
def test_full_model_matches_reference_forward(opts):
    """The whole forward equals diffusion_policy's, built from torch's layers, per option."""
    torch.manual_seed(1)
    kw = dict(input_dim=3, output_dim=3, horizon=10, n_obs_steps=3, cond_dim=5, n_layer=2,
              n_head=4, n_emb=32, p_drop_attn=0.1)
    m = TransformerForDiffusion(TransformerConfig(**{**kw, **opts})).eval()
    with torch.no_grad():  # non-trivial biases / embeddings, so every term is exercised
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sample, t = torch.randn(2, 10, 3), torch.tensor(37)
    cond = torch.randn(2, 3, 5) if m.config.obs_as_cond else None
    with torch.no_grad():
        got = m(sample, t, cond)
        want = _reference_forward(m, sample, t, cond)
    assert (got - want).abs().max().item() <= 1e-5
    if opts["causal_attn"]:  # the reference's causal mask, built independently
        T = m.pos_emb.shape[1]
        assert torch.equal(m.mask, nn.Transformer.generate_square_subsequent_mask(T))
    else:
        assert m.mask is None and m.memory_mask is None
