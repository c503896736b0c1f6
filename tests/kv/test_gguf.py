"""GGUF loading (kv/dequant, kv/bpe, kv/pretrained) on a tiny llama GGUF file the test writes with the
gguf library's own writer: F32 norms, a Q8_0 embedding, Q4_1 projections and a byte-level BPE trained
here. The cache dir's weights in the built-in decoder give the logits of a decoder holding the same
dequantised weights, and transformers' LlamaForCausalLM on that dir gives them too (a wrong RoPE
permutation, a missing tie or a transposed tensor all change them); the cache is reused, rebuilt when
incomplete or from another file, and a file that is not a llama decoder is refused by name."""

import json
import os

import numpy as np
import pytest
import torch

try:
    import gguf
    import safetensors  # noqa: F401
    import tokenizers  # noqa: F401
except ImportError as e:
    # setup.cfg's dev extra installs the gguf extra: in CI a missing package is a broken install step
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true but the gguf extra does not import ({e}): make install installs it", pytrace=False)
    pytest.skip(f"the gguf extra is not installed ({e}); pip install -e '.[gguf]' to run these",
                allow_module_level=True)

from miro_runtime.kv.bpe import tokenizer_from_gguf  # noqa: E402
from miro_runtime.kv.dequant import build_cache, read_gguf  # noqa: E402
from miro_runtime.kv.llama import Llama, LlamaConfig, half_to_interleaved, interleaved_to_half  # noqa: E402
from miro_runtime.kv.pretrained import Pretrained  # noqa: E402

Q = gguf.GGMLQuantizationType
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The capital of France is Paris.", "café naïve résumé 12345 and 2024", "hello world, hello there",
          "<|im_start|>user\nwhat is 7 times 6?<|im_end|>"] * 20
# this decoder's per-layer names -> GGUF's, written out here independently of kv/dequant's table
GGUF_NAMES = {"attn_norm.weight": "attn_norm.weight", "attn.wq.weight": "attn_q.weight",
              "attn.wk.weight": "attn_k.weight", "attn.wv.weight": "attn_v.weight",
              "attn.wo.weight": "attn_output.weight", "mlp_norm.weight": "ffn_norm.weight",
              "w1.weight": "ffn_gate.weight", "w3.weight": "ffn_up.weight", "w2.weight": "ffn_down.weight"}


def trained_bpe():
    """A ~300-token byte-level BPE trained here (digits split alone, as SmolLM2's): (tokenizer, tokens,
    merges as 'a b' strings, token types)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIAL else 1 for t in tokens]
    return tok, tokens, merges, types


@pytest.fixture(scope="module")
def bpe():
    return trained_bpe()


def quantised(w: np.ndarray, kind) -> np.ndarray:
    return w.astype(np.float32) if kind == Q.F32 else gguf.quants.quantize(w.astype(np.float32), kind)


def write_gguf(path, cfg: LlamaConfig, bpe, seed=0, arch="llama", extra=None, header=None):
    """A random decoder ``cfg`` as a GGUF file; -> the state dict (this decoder's names) of the weights the
    file holds, each dequantised here with gguf's own code (what a loader must reproduce)."""
    _, tokens, merges, types = bpe
    torch.manual_seed(seed)
    src = Llama(cfg).state_dict()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(512)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    for k, v in (header or {}).items():
        w.add_float32(k, v)
    names = {"embed.weight": ("token_embd.weight", Q.Q8_0), "norm.weight": ("output_norm.weight", Q.F32)}
    if not cfg.tie_embeddings:
        names["out.weight"] = ("output.weight", Q.Q8_0)
    for i in range(cfg.n_layers):
        for ours, g in GGUF_NAMES.items():
            kind = Q.F32 if g.endswith("norm.weight") else Q.Q4_1
            names[f"layers.{i}.{ours}"] = (f"blk.{i}.{g}", kind)
    held = {}
    for ours, (g, kind) in names.items():
        data = quantised(src[ours].numpy(), kind)
        w.add_tensor(g, data, raw_dtype=None if kind == Q.F32 else kind)
        held[ours] = torch.from_numpy(np.array(gguf.quants.dequantize(data, kind), dtype=np.float32))
    for g, arr in (extra or {}).items():
        w.add_tensor(g, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


CFG = LlamaConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                  rope_theta=50000.0, norm_eps=float(np.float32(1e-5)), tie_embeddings=True)  # GGUF keeps float32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bpe):
    d = tmp_path_factory.mktemp("gguf")
    held = write_gguf(d / "tiny.gguf", CFG, bpe)
    return str(d / "tiny.gguf"), held, d


def reference(cfg, held) -> Llama:
    m = Llama(cfg).eval()
    m.load_state_dict(held, strict=True)
    return m


IDS = torch.tensor([[5, 17, 260, 2, 99, 1, 42, 280]])  # (1, 8)


@pytest.mark.parametrize("tied", [True, False])
def test_the_cache_dir_holds_the_files_weights_for_the_builtin_decoder_and_transformers(tmp_path, bpe, tied):
    cfg = LlamaConfig(**{**CFG.__dict__, "tie_embeddings": tied})
    held = write_gguf(tmp_path / "m.gguf", cfg, bpe, seed=3)
    d = build_cache(str(tmp_path / "m.gguf"), str(tmp_path / "cache"), "tiny")
    want = reference(cfg, held)(IDS)  # (1, 8, V)
    got = Pretrained("tiny", d)
    assert got.model.cfg == cfg and got.described.startswith("tiny (")
    assert torch.equal(got.model(IDS), want)
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(d, local_files_only=True).eval()
    assert hf.config.tie_word_embeddings is tied
    with torch.no_grad():
        torch.testing.assert_close(hf(IDS).logits, want, atol=1e-5, rtol=0)
    with open(os.path.join(d, "tokenizer_config.json")) as f:
        tc = json.load(f)
    assert (tc["bos_token"], tc["eos_token"], tc["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", False)


def test_a_second_build_reuses_the_cache_and_an_incomplete_or_other_one_is_rebuilt(tiny, tmp_path):
    path, _, _ = tiny
    root = str(tmp_path / "cache")
    d = build_cache(path, root, "tiny")
    st = os.path.join(d, "model.safetensors")
    os.utime(st, (1, 1))  # an old mtime: a rewrite would set a new one
    assert build_cache(path, root, "tiny") == d and os.stat(st).st_mtime == 1
    os.remove(os.path.join(d, "miro-source.json"))  # a build cut short before its last file
    assert build_cache(path, root, "tiny") == d and os.stat(st).st_mtime > 1
    os.utime(st, (1, 1))
    src = os.path.join(d, "miro-source.json")
    with open(src) as f:
        j = json.load(f)
    with open(src, "w") as f:
        json.dump({**j, "sha256": "0" * 64}, f)  # written from another file
    assert build_cache(path, root, "tiny") == d and os.stat(st).st_mtime > 1
    assert sorted(os.listdir(root)) == sorted([os.path.basename(d), f".{os.path.basename(d)}.lock"])  # no leftovers
    with pytest.raises(ValueError, match=r"differs from the 0000000000000000\.\.\. its package recorded"):
        build_cache(path, root, "tiny", expected_sha256="0" * 64)


def test_a_file_that_is_not_this_decoder_is_refused_naming_what(tmp_path, bpe):
    write_gguf(tmp_path / "x.gguf", CFG, bpe, extra={"blk.0.attn_q_norm.weight": np.ones(16, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected tensor 'blk.0.attn_q_norm.weight'"):
        build_cache(str(tmp_path / "x.gguf"), str(tmp_path / "c"), "x")
    write_gguf(tmp_path / "g.gguf", CFG, bpe, arch="gpt2")
    with pytest.raises(ValueError, match=r"general.architecture is 'gpt2': only 'llama'"):
        build_cache(str(tmp_path / "g.gguf"), str(tmp_path / "c"), "g")
    write_gguf(tmp_path / "r.gguf", CFG, bpe, header={"llama.rope.scaling.factor": 8.0})
    with pytest.raises(ValueError, match=r"llama.rope.scaling.factor: RoPE scaling is not implemented"):
        build_cache(str(tmp_path / "r.gguf"), str(tmp_path / "c"), "r")
    assert not [n for n in os.listdir(tmp_path / "c") if not n.endswith(".lock")]  # nothing half-written left


def test_the_tokenizer_rebuilt_from_the_file_encodes_as_the_one_it_came_from(tiny, bpe):
    path, _, _ = tiny
    meta, _ = read_gguf(path, tensors=False)
    ours, theirs = tokenizer_from_gguf(meta), bpe[0]
    for s in ["The capital of France is", "café naïve 12345", "<|im_start|>user\nhello<|im_end|>", "zq 9 ü"]:
        ids = ours.encode(s).ids
        assert ids == theirs.encode(s).ids and ours.decode(ids, skip_special_tokens=False) == s
    assert ours.encode("12345").tokens == list("12345")  # every digit alone
    assert len(ours.encode("<|im_start|>").ids) == 1
    meta["tokenizer.ggml.pre"] = "llama-bpe"
    with pytest.raises(ValueError, match=r"tokenizer.ggml.pre 'llama-bpe': a pre-tokenizer this loader does not know"):
        tokenizer_from_gguf(meta)


def test_q4_1_and_q8_0_blocks_dequantise_to_the_values_pinned_here():
    # Q4_1: f16 scale d, f16 min m, 16 bytes; byte j's low nibble is element j, its high nibble element j + 16
    lo, hi = np.arange(16), 15 - np.arange(16)
    block = np.concatenate([np.array([0.5, -1.0], "<f2").view(np.uint8), (lo | (hi << 4)).astype(np.uint8)])
    got = gguf.quants.dequantize(block[None], Q.Q4_1)
    assert np.array_equal(got[0], np.concatenate([0.5 * lo - 1.0, 0.5 * hi - 1.0]).astype(np.float32))
    # Q8_0: f16 scale d, 32 int8 values
    q = np.arange(-16, 16, dtype=np.int8)
    block = np.concatenate([np.array([0.25], "<f2").view(np.uint8), q.view(np.uint8)])
    assert np.array_equal(gguf.quants.dequantize(block[None], Q.Q8_0)[0], 0.25 * q.astype(np.float32))


def test_the_rope_permutation_round_trips_and_matches_rotate_half():
    from miro_runtime.kv.llama import rope
    w = torch.randn(3 * 16, 8)
    assert torch.equal(half_to_interleaved(interleaved_to_half(w, 3, 16), 3, 16), w)
    assert not torch.equal(interleaved_to_half(w, 3, 16), w)
    # a query projected by interleaved rows and rotated in pairs (2i, 2i+1) equals the same query projected
    # by the permuted rows and rotated in halves (i, i + hd/2), permuted back
    x, pos = torch.randn(5, 8), torch.arange(5)
    q = (x @ w.T).view(5, 3, 16).transpose(0, 1)[None]  # (1, H, T, hd)
    qh = (x @ interleaved_to_half(w, 3, 16).T).view(5, 3, 16).transpose(0, 1)[None]
    freqs = 1.0 / 1e4 ** (torch.arange(0, 16, 2).float() / 16)
    ang = pos[:, None] * freqs[None]  # (T, hd/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    rot = qh * cos + torch.cat([-qh[..., 8:], qh[..., :8]], -1) * sin  # transformers' rotate_half
    perm = torch.cat([torch.arange(0, 16, 2), torch.arange(1, 16, 2)])
    back = torch.empty_like(rot)
    back[..., perm] = rot
    torch.testing.assert_close(rope(q, pos, 1e4), back)
