"""The KV policies a request may name, and what a user is told about the built-in models, in a module
that imports nothing (the daemon's config checks, ``miro status`` and ``--help`` read it without torch).
``kv/policies`` implements each lossy policy; ``kv/generate`` the models."""

POLICIES = ("full", "sink", "h2o", "cascade", "topk")
STATE_SUBDIR = "kv"  # mirod keeps the KV namespace's LMDB environment (cold blocks, prefixes) in STATE_DIR/kv
BUILTIN_MODELS = ("builtin-tiny",)
# said wherever a user meets a built-in model: its weights are random, so its text is not language
RANDOM_INIT = "random-init weights: the text is noise; it exercises the cache, not language"
BYTE_TOKENS = "byte-level: each prompt byte is a token id (0-255); the output ids are read back as UTF-8 bytes"


def model_note(name: str):
    """What a user should know about model ``name`` before reading its text (None: nothing special)."""
    return RANDOM_INIT if name in BUILTIN_MODELS else None


def describe_model(name: str) -> str:
    """``name`` with its note, e.g. ``builtin-tiny (random-init weights: ...)``."""
    note = model_note(name)
    return f"{name} ({note})" if note else name

