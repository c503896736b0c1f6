"""GGUF -> a local model directory: read a llama-architecture GGUF file with the ``gguf`` library,
dequantise its tensors to float32 once, and write them with the config and tokenizer as a transformers
``LlamaForCausalLM`` directory (the cache dir) that later loads read instead. Needs the ``gguf`` extra."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from .llama import LlamaConfig, hf_config, to_hf_names

GGUF_INSTALL = "pip install 'miro-runtime[gguf]'"
CACHE_FORMAT = 1  # bump when the cache dir's contents change: older dirs are then rebuilt
SOURCE = "miro-source.json"  # written last: a dir holding it is complete
# GGUF's per-layer tensor names (blk.<i>.<name>) -> this decoder's (layers.<i>.<name>)
LAYER_TENSORS = {"attn_norm.weight": "attn_norm.weight", "attn_q.weight": "attn.wq.weight",
                 "attn_k.weight": "attn.wk.weight", "attn_v.weight": "attn.wv.weight",
                 "attn_output.weight": "attn.wo.weight", "ffn_norm.weight": "mlp_norm.weight",
                 "ffn_gate.weight": "w1.weight", "ffn_up.weight": "w3.weight", "ffn_down.weight": "w2.weight"}
TOP_TENSORS = {"token_embd.weight": "embed.weight", "output_norm.weight": "norm.weight", "output.weight": "out.weight"}
# the tensor types gguf's numpy code dequantises and our tests pin; another type is refused by name
TYPES = ("F32", "F16", "Q8_0", "Q4_1")


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"reading GGUF files needs the gguf package ({e}): {GGUF_INSTALL}") from e
    return gguf


def read_gguf(path: str, tensors: bool = True) -> tuple:
    """(meta, weights): every key/value field of the GGUF file at ``path`` as Python values, and (with
    ``tensors``) every tensor dequantised to a float32 array in torch's (out, in) order, by GGUF name."""
    gguf = _gguf()
    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items()}
    out = {}
    for t in r.tensors if tensors else ():
        kind = t.tensor_type.name
        if kind not in TYPES:
            raise ValueError(f"{path}: tensor {t.name} is {kind}; this loader dequantises {', '.join(TYPES)}")
        want = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first; torch outermost first
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if w.shape != want:
            raise ValueError(f"{path}: tensor {t.name} dequantised to {w.shape}, its header says {want}")
        out[t.name] = np.array(w, copy=True) if not w.flags.writeable else w  # off the file's memory map
    return meta, out


def config_from_meta(meta: dict, tied: bool) -> LlamaConfig:
    """The decoder a llama GGUF file describes; another architecture, RoPE scaling, or a RoPE that does
    not span the whole head is refused (this decoder implements none of them)."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture is {arch!r}: only 'llama' GGUF files load into this decoder")
    scaling = sorted(k for k in meta if k.startswith("llama.rope.scaling"))
    if scaling:
        raise ValueError(f"{', '.join(scaling)}: RoPE scaling is not implemented by this decoder")

    def need(key):
        if f"llama.{key}" not in meta:
            raise ValueError(f"llama.{key} is missing from the GGUF header")
        return meta[f"llama.{key}"]
    dim, heads = int(need("embedding_length")), int(need("attention.head_count"))
    cfg = LlamaConfig(vocab_size=len(meta["tokenizer.ggml.tokens"]), dim=dim, n_layers=int(need("block_count")),
                      n_heads=heads, n_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
                      hidden_dim=int(need("feed_forward_length")),
                      rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
                      norm_eps=float(need("attention.layer_norm_rms_epsilon")), tie_embeddings=tied)
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if f"llama.{key}" in meta and int(meta[f"llama.{key}"]) != cfg.head_dim:
            raise ValueError(f"llama.{key} is {meta[f'llama.{key}']}, not the head size {cfg.head_dim} "
                             f"(embedding_length {dim} / head_count {heads}) this decoder assumes")
    if "llama.vocab_size" in meta and int(meta["llama.vocab_size"]) != cfg.vocab_size:
        raise ValueError(f"llama.vocab_size {meta['llama.vocab_size']} differs from the "
                         f"{cfg.vocab_size} tokens of tokenizer.ggml.tokens")
    return cfg


def builtin_state(weights: dict, cfg: LlamaConfig) -> dict:
    """GGUF tensors by GGUF name -> this decoder's state dict (float32 torch tensors sharing the arrays'
    memory). q/k stay as they are: GGUF and this decoder both rotate interleaved pairs. Every expected
    tensor must be there with its shape, and no other."""
    import torch
    hd, want = cfg.head_dim, {}
    shapes = {"attn_norm.weight": (cfg.dim,), "attn.wq.weight": (cfg.n_heads * hd, cfg.dim),
              "attn.wk.weight": (cfg.n_kv_heads * hd, cfg.dim), "attn.wv.weight": (cfg.n_kv_heads * hd, cfg.dim),
              "attn.wo.weight": (cfg.dim, cfg.n_heads * hd), "mlp_norm.weight": (cfg.dim,),
              "w1.weight": (cfg.hidden_dim, cfg.dim), "w3.weight": (cfg.hidden_dim, cfg.dim),
              "w2.weight": (cfg.dim, cfg.hidden_dim)}
    for g, ours in TOP_TENSORS.items():
        if g != "output.weight" or not cfg.tie_embeddings:
            want[g] = (ours, (cfg.dim,) if g == "output_norm.weight" else (cfg.vocab_size, cfg.dim))
    for i in range(cfg.n_layers):
        for g, ours in LAYER_TENSORS.items():
            want[f"blk.{i}.{g}"] = (f"layers.{i}.{ours}", shapes[ours])
    unexpected = sorted(set(weights) - set(want))
    if unexpected:
        raise ValueError(f"unexpected tensor {unexpected[0]!r} in the GGUF file ({len(unexpected)} in all): "
                         f"not part of a {cfg.n_layers}-layer llama decoder")
    missing = sorted(set(want) - set(weights))
    if missing:
        raise ValueError(f"tensor {missing[0]!r} is missing from the GGUF file ({len(missing)} in all)")
    state = {}
    for g, (ours, shape) in want.items():
        if weights[g].shape != shape:
            raise ValueError(f"tensor {g} is {weights[g].shape}, expected {shape} for {ours}")
        state[ours] = torch.from_numpy(weights[g])
    return state


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_complete(d: str, sha: str) -> bool:
    """``d`` was written whole from the file with digest ``sha`` by this format of cache."""
    try:
        with open(os.path.join(d, SOURCE)) as f:
            src = json.load(f)
    except (OSError, ValueError):
        return False
    return src.get("sha256") == sha and src.get("format") == CACHE_FORMAT


def _write(gguf_path: str, d: str, sha: str, source: dict) -> None:
    """The cache dir's contents into the (empty) directory ``d``; ``SOURCE`` last."""
    from safetensors.torch import save_file

    from .bpe import tokenizer_from_gguf
    meta, weights = read_gguf(gguf_path)
    cfg = config_from_meta(meta, tied="output.weight" not in weights)
    state = to_hf_names(builtin_state(weights, cfg), cfg)  # transformers' names; q/k rows to rotate-half
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    del state, weights
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "float32",
              **hf_config(cfg, int(meta.get("llama.context_length", 2048))),
              "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": meta.get("tokenizer.ggml.padding_token_id")}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    tokenizer_from_gguf(meta).save(os.path.join(d, "tokenizer.json"))
    tokens = meta["tokenizer.ggml.tokens"]

    def tok(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None else None
    tconf = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok("bos"), "eos_token": tok("eos"),
             "unk_token": tok("unknown"), "pad_token": tok("padding"), "add_bos_token": False,
             "add_prefix_space": False, "clean_up_tokenization_spaces": False,
             "model_max_length": config["max_position_embeddings"]}
    if "tokenizer.chat_template" in meta:
        tconf["chat_template"] = meta["tokenizer.chat_template"]
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tconf, f, indent=1)
    src = {**source, "gguf": os.path.abspath(gguf_path), "sha256": sha, "format": CACHE_FORMAT,
           "gguf_version": _dist_version("gguf"),
           "general.name": meta.get("general.name"), "file_type": meta.get("general.file_type")}
    with open(os.path.join(d, SOURCE), "w") as f:
        json.dump(src, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _dist_version(dist: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_cache(gguf_path: str, root: str, name: str, expected_sha256: Optional[str] = None,
                source: Optional[dict] = None) -> str:
    """The cache dir of the GGUF file at ``gguf_path`` under ``root`` (``root/<name>-<sha256[:16]>``),
    dequantised and written now unless a complete one is there. ``expected_sha256``: the digest pip
    recorded for the file; a file that differs is refused. ``source``: extra facts for ``SOURCE``.
    Concurrent builders wait on a lock; the dir appears whole (written aside, then renamed)."""
    sha = file_sha256(gguf_path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ValueError(f"{gguf_path}: sha256 {sha[:16]}... differs from the {expected_sha256[:16]}... its package "
                         "recorded when installed; reinstall the package")
    d = os.path.join(root, f"{name}-{sha[:16]}")
    if cache_complete(d, sha):
        return d
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{name}-{sha[:16]}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the dir complete
        if cache_complete(d, sha):
            return d
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
        try:
            _write(gguf_path, tmp, sha, source or {})
            os.chmod(tmp, 0o755)  # mkdtemp made it private; the model is no secret (mirod may read a user's cache)
            if os.path.exists(d):  # an incomplete or older-format dir: replaced whole
                shutil.rmtree(d)
            os.rename(tmp, d)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return d
