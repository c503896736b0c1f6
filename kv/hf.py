"""Hugging Face transformers (5.x) adapter: ``TieredCache`` is a ``transformers.Cache`` whose layers
keep their keys and values in a ``TieredKVCache``, so ``model.generate(cache=TieredCache(...))``
(``past_key_values=`` before transformers 5.24) runs a local model with some layers' KV in the RAM or
LMDB tier. transformers applies RoPE before handing keys to a cache, so this path is lossless only
(policy ``full``): a lossy policy would have to re-position rotated keys. Models load from local
directories only (devices have no hub access). Needs the ``llm`` extra.
"""

from __future__ import annotations

import os

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .cache import TieredKVCache
from .llama import hf_config, to_hf_names


class TieredLayer(CacheLayerMixin):
    """One decoder layer's view of the shared ``TieredKVCache``."""

    is_sliding = False
    is_croppable = False

    def __init__(self, tiered: TieredKVCache, layer: int):
        super().__init__()
        self.tiered, self.layer, self.length = tiered, layer, 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states (B, Hkv, T, hd) -> every cached token's, each (B, Hkv, S, hd)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.tiered.before_layer(self.layer)  # start fetching the next cold layer while this one attends
        K, V, _, _ = self.tiered.update(self.layer, key_states, value_states)
        self.length += key_states.shape[-2]
        return K, V

    def get_mask_sizes(self, query_length: int) -> tuple:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise NotImplementedError("a TieredCache is not reset in place: make a new one per generation")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a TieredCache does not crop (assisted decoding is not supported)")

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("a TieredCache does not reorder beams: use greedy or sampling decoding")


class TieredCache(Cache):
    """A transformers ``Cache`` over ``TieredKVCache``: hot layers in memory, the others' blocks in
    ``cold`` (a ``RamBlobTier`` or ``FlashTier``). ``hot_layers=None`` keeps every layer hot."""

    def __init__(self, config, cold=None, hot_layers=None, block_tokens: int = 16, model_id: str = "hf"):
        c = config.get_text_config(decoder=True)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.tiered = TieredKVCache(c.num_hidden_layers, n_kv, head_dim, cold=cold, hot_layers=hot_layers,
                                    block_tokens=block_tokens, model_id=model_id)
        super().__init__(layers=[TieredLayer(self.tiered, i) for i in range(c.num_hidden_layers)])

    def hot_bytes(self) -> int:
        return self.tiered.hot_bytes()

    def cold_bytes(self) -> int:
        return self.tiered.cold_bytes()

    def close(self, drop_blocks: bool = False) -> None:
        self.tiered.close(drop_blocks)


def load_local(path: str):
    """(model, tokenizer or None) from a local directory, never the hub. Without tokenizer files the
    prompt's bytes are its tokens (the model's vocabulary must hold 256)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"--model {path}: no config.json there; give the directory of a local transformers model")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tok = None
    if any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json",
                                                            "tokenizer.model")):
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    elif model.config.vocab_size < 256:
        raise ValueError(f"--model {path}: no tokenizer files and a vocabulary of {model.config.vocab_size} "
                         "(< 256), so the prompt's bytes cannot be its tokens; give a directory with its tokenizer")
    return model, tok


def to_hf(model, path: str) -> None:
    """Write the built-in decoder as a transformers ``LlamaForCausalLM`` directory (same weights; the
    query/key rows permuted from interleaved RoPE pairs to transformers' rotate-half layout)."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM
    c = model.cfg
    hf = LlamaForCausalLM(HFConfig(**hf_config(c)))
    sd = to_hf_names(model.state_dict(), c)
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m and not (c.tie_embeddings and m == "lm_head.weight")]:
        raise RuntimeError(f"built-in -> transformers mapping is off: missing {missing}, unexpected {unexpected}")
    hf.save_pretrained(path)
