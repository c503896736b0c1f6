"""A small Llama-style decoder in pure torch (RMSNorm, RoPE, grouped-query attention, SwiGLU), written
for the tiered KV cache: every attention layer hands its new keys and values to the cache and attends
over what the cache gives back, wherever the cache keeps them. Keys enter the cache before RoPE, and
positions are applied at attention time, so a cache may evict or re-position tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LlamaConfig:
    vocab_size: int = 256  # bytes: the built-in model needs no tokenizer file
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: n_heads / n_kv_heads query heads share a KV head
    hidden_dim: int = 344  # SwiGLU width (about 8/3 * dim)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # the output layer is the token embedding (SmolLM2); no weights of its own

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., D)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def interleaved_to_half(w: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """Query/key rows from the interleaved RoPE layout (pairs (2i, 2i+1): this decoder's and GGUF's) to
    transformers' rotate-half layout (pairs (i, i + hd/2)). w (heads * hd, D) -> the same shape."""
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])  # new row j <- old row perm[j]
    return w.reshape(heads, hd, -1)[:, perm].reshape(heads * hd, -1)


def half_to_interleaved(w: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """The inverse of ``interleaved_to_half``: rotate-half rows (transformers) back to interleaved pairs."""
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(hd)  # old row perm[j] <- new row j
    return w.reshape(heads, hd, -1)[:, inv].reshape(heads * hd, -1)


_CIS = {}  # (head dim, theta, device) -> (P, D/2) complex rotations of positions 0..P-1, grown on demand


def _cis(pos: torch.Tensor, d: int, theta: float) -> torch.Tensor:
    """(T,) positions -> (T, D/2) unit complex numbers e^(i pos freq). A table read, not a cos and sin of
    every cached position at every step: a decode step rotates all S cached keys (they are stored before
    RoPE so that policies can re-position them), and computing the angles was most of that cost."""
    n = int(pos.max()) + 1 if pos.numel() else 1
    key = (d, theta, pos.device)
    tab = _CIS.get(key)
    if tab is None or tab.shape[0] < n:
        m = max(n, 1024, 2 * (0 if tab is None else tab.shape[0]))
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d)  # (D/2,)
        ang = torch.arange(m, device=pos.device, dtype=torch.float32)[:, None] * freqs[None, :]  # (m, D/2)
        tab = _CIS[key] = torch.polar(torch.ones_like(ang), ang)
    return tab[pos]


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate pairs of channels (2j, 2j+1) by position: one complex multiply per pair. x (B, H, T, D),
    pos (T,) positions."""
    d = x.shape[-1]
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2))  # (B, H, T, D/2)
    return torch.view_as_real(xc * _cis(pos, d, theta)).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x, start: int, cache=None):
        B, T, _ = x.shape
        c, hd = self.cfg, self.cfg.head_dim
        q = self.wq(x).view(B, T, c.n_heads, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, c.n_kv_heads, hd).transpose(1, 2)  # (B, Hkv, T, hd), before RoPE
        v = self.wv(x).view(B, T, c.n_kv_heads, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        if cache is not None:
            # (B, Hkv, S, hd) each; RoPE positions and absolute positions (S,) of what the cache kept
            k, v, krope, kabs = cache.update(self.layer, k, v, q=q)
        else:
            krope = kabs = torch.arange(start, start + T, device=x.device)
        qrope, qabs = krope[-T:], kabs[..., -T:]  # the new tokens are the cache's last T
        q, k = rope(q, qrope, c.rope_theta), rope(k, krope, c.rope_theta)
        rep = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, hd)
        # (T, S): causal by absolute position, whatever was evicted; (H, T, S) when each KV head keeps its
        # own tokens (kabs (Hkv, S), cascade)
        mask = qabs[..., :, None] >= kabs[..., None, :]
        if mask.dim() == 3:
            mask = mask.repeat_interleave(rep, dim=0)
        if cache is not None and cache.needs_scores:  # score-based eviction needs the weights themselves
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, H, T, S)
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            cache.observe(self.layer, att)
            y = att @ v  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, c.n_heads * hd))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.attn_norm, self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps), RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)  # down

    def forward(self, x, start, cache=None):  # (B, T, D)
        x = x + self.attn(self.attn_norm(x), start, cache)
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))  # SwiGLU


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.n_heads % cfg.n_kv_heads or cfg.dim % cfg.n_heads:
            raise ValueError(f"n_heads {cfg.n_heads} must divide dim {cfg.dim} and be a multiple of "
                             f"n_kv_heads {cfg.n_kv_heads}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # tied: the logits are read off the embedding matrix itself, so a state dict loaded with
        # assign=True cannot leave a stale copy behind
        self.out = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02 if p.shape[0] != cfg.vocab_size else 1.0 / math.sqrt(cfg.dim))

    @classmethod
    def from_state_dict(cls, cfg: LlamaConfig, state: dict) -> "Llama":
        """A model holding ``state``'s tensors themselves (no copy), built on the meta device so that
        no random weights are made first (135M parameters would be drawn for nothing). Strict: a
        missing or unexpected name, or a wrong shape, is an error."""
        with torch.device("meta"):
            m = cls(cfg)
        m.load_state_dict(state, strict=True, assign=True)
        return m.eval()

    def forward(self, tokens: torch.Tensor, start: int = 0, cache=None, last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) at absolute positions start..start+T-1 -> logits (B, T, V), or (B, 1, V) for
        the last position only with ``last_only`` (a 4k-token prefill's full logits would be 800 MB)."""
        x = self.embed(tokens)  # (B, T, D)
        for i, blk in enumerate(self.layers):
            if cache is not None:
                cache.before_layer(i)  # the cache prefetches layer i+1's cold blocks meanwhile
            x = blk(x, start, cache)
        if last_only:
            x = x[:, -1:]  # (B, 1, D)
        x = self.norm(x)
        return F.linear(x, self.embed.weight) if self.out is None else self.out(x)  # (B, T or 1, V)


@torch.no_grad()
def generate(model: Llama, prompt: torch.Tensor, max_new_tokens: int, cache=None) -> torch.Tensor:
    """Greedy decoding. prompt (B, T) -> (B, max_new_tokens). Without a cache every step recomputes
    the whole sequence (the reference a cache must match)."""
    seq, out = prompt, []
    logits = model(prompt, 0, cache, last_only=True)
    for i in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        if i == max_new_tokens - 1:
            break  # the last token needs no forward pass of its own
        if cache is None:
            seq = torch.cat([seq, nxt], dim=1)
            logits = model(seq, 0, None, last_only=True)
        else:
            logits = model(nxt, cache.seen, cache, last_only=True)
    return torch.cat(out, dim=1)


# this decoder's per-layer parameter names and transformers' LlamaForCausalLM names for the same tensors
HF_LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
                  "attn.wq.weight": "self_attn.q_proj.weight", "attn.wk.weight": "self_attn.k_proj.weight",
                  "attn.wv.weight": "self_attn.v_proj.weight", "attn.wo.weight": "self_attn.o_proj.weight",
                  "w1.weight": "mlp.gate_proj.weight", "w3.weight": "mlp.up_proj.weight",
                  "w2.weight": "mlp.down_proj.weight"}
HF_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                "out.weight": "lm_head.weight"}


def to_hf_names(state: dict, cfg: LlamaConfig) -> dict:
    """This decoder's state dict as transformers' ``LlamaForCausalLM`` names and layout: the same tensors,
    query/key rows permuted to rotate-half (no ``lm_head.weight`` when tied)."""
    out = {}
    for name, w in state.items():
        if name in HF_TOP_NAMES:
            out[HF_TOP_NAMES[name]] = w
            continue
        _, i, rest = name.split(".", 2)  # layers.<i>.<rest>
        if rest == "attn.wq.weight":
            w = interleaved_to_half(w, cfg.n_heads, cfg.head_dim)
        elif rest == "attn.wk.weight":
            w = interleaved_to_half(w, cfg.n_kv_heads, cfg.head_dim)
        out[f"model.layers.{i}.{HF_LAYER_NAMES[rest]}"] = w
    return out


def from_hf_names(state: dict, cfg: LlamaConfig) -> dict:
    """The inverse of ``to_hf_names``: a transformers Llama state dict as this decoder's names and its
    interleaved RoPE layout. A name neither map knows is an error naming it."""
    top = {v: k for k, v in HF_TOP_NAMES.items()}
    layer = {v: k for k, v in HF_LAYER_NAMES.items()}
    out = {}
    for name, w in state.items():
        if name in top:
            out[top[name]] = w
            continue
        parts = name.split(".", 3)  # model.layers.<i>.<rest>
        if len(parts) != 4 or parts[:2] != ["model", "layers"] or parts[3] not in layer:
            raise ValueError(f"unexpected tensor {name!r}: not a Llama decoder weight this decoder knows")
        rest = layer[parts[3]]
        if rest == "attn.wq.weight":
            w = half_to_interleaved(w, cfg.n_heads, cfg.head_dim)
        elif rest == "attn.wk.weight":
            w = half_to_interleaved(w, cfg.n_kv_heads, cfg.head_dim)
        out[f"layers.{parts[2]}.{rest}"] = w
    return out


def hf_config(cfg: LlamaConfig, max_positions: int = 1 << 16) -> dict:
    """The transformers ``LlamaConfig`` arguments describing this decoder (config.json's keys)."""
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "max_position_embeddings": max_positions, "tie_word_embeddings": cfg.tie_embeddings,
            "attention_bias": False, "mlp_bias": False, "hidden_act": "silu"}
