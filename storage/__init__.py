"""Tiered store: slotted RAM tier + crash-safe LMDB flash tier + asynchronous swap engine (CarM).

Knows nothing of learning, the daemon or the CLI; the CL engine and the KV-cache path sit on it.
Names are imported on first use, so ``storage.names`` (allowed values) loads neither lmdb nor numpy.
"""

_LAZY = {
    "codec": ("Record", "encode_record", "decode_record", "encode_blob", "decode_blob"),
    "errors": ("StoreError", "BadRecordError", "BudgetError", "CorruptRecordError", "DamagedStoreError", "ForkError",
               "SchemaTooNewError"),
    "flash": ("FlashTier", "SampleSpec", "PutResult", "NsBatch", "SCHEMA_VERSION", "SYNC_MODES", "POLICIES"),
    "ram": ("RamTier",),
    "swap": ("SwapEngine",),
    "tier": ("RamBlobTier", "Tier"),
}
_WHERE = {name: mod for mod, names in _LAZY.items() for name in names}


def __getattr__(name):
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
