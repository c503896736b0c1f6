"""A GGUF file's byte-level BPE tokenizer rebuilt as a ``tokenizers.Tokenizer`` from the vocabulary and
merges it carries (``tokenizer.ggml.*``), so a model needs no tokenizer file of its own. Needs the
``gguf`` extra (tokenizers)."""

from __future__ import annotations

TOKENIZERS_INSTALL = "pip install 'miro-runtime[gguf]'"
CONTROL = 3  # tokenizer.ggml.token_type of a control token (<|im_start|> ...): llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def _pre_tokenizer(pre):
    """The pre-tokenizer llama.cpp names ``pre``. Only the ones written here are known: a guess would
    split text differently from training and degrade every answer silently."""
    from tokenizers import pre_tokenizers as pt
    if pre == "smollm":
        # llama.cpp's smollm regexes: every digit alone (\p{N}), then GPT-2's byte-level pattern
        return pt.Sequence([pt.Digits(individual_digits=True),
                            pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre == "gpt2":  # GPT-2's own pattern, which tokenizers' ByteLevel regex is
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    # None: llama.cpp then uses its "default" rules, which are not GPT-2's either
    raise ValueError(f"tokenizer.ggml.pre {pre!r}: a pre-tokenizer this loader does not know (smollm, gpt2); "
                     "its splitting rules would have to be written here first")


def tokenizer_from_gguf(meta: dict):
    """``meta``: a GGUF file's key/value fields (``dequant.read_gguf``). -> ``tokenizers.Tokenizer`` with
    the file's vocabulary (ids = positions in ``tokenizer.ggml.tokens``), merges, pre-tokenizer and its
    control tokens kept whole; no BOS is added (the file's ``add_bos_token`` must not ask for one)."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models
    except ImportError as e:
        raise ImportError(f"the GGUF tokenizer needs the tokenizers package ({e}): {TOKENIZERS_INSTALL}") from e
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"tokenizer.ggml.model {kind!r}: only byte-level BPE ('gpt2') is read from GGUF here")
    if meta.get("tokenizer.ggml.add_bos_token"):
        raise ValueError("tokenizer.ggml.add_bos_token is true: this loader adds no BOS token, so it would "
                         "encode prompts differently from the model's training")
    tokens, types = list(meta["tokenizer.ggml.tokens"]), list(meta.get("tokenizer.ggml.token_type") or [])
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"tokenizer.ggml.tokens holds {len(tokens) - len(vocab)} duplicate tokens")
    merges = []
    for m in meta["tokenizer.ggml.merges"]:
        pair = m.split(" ")  # byte-level symbols never hold a space (it is written as Ġ)
        if len(pair) != 2 or pair[0] + pair[1] not in vocab:
            raise ValueError(f"tokenizer.ggml.merges entry {m!r} is not two symbols whose merge is in the vocabulary")
        merges.append((pair[0], pair[1]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()
    # control tokens are matched whole before BPE runs, so "<|im_start|>" in a prompt is one id
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    return tok
