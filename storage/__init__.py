"""Tiered store: slotted RAM tier + crash-safe LMDB flash tier + asynchronous swap engine (CarM).

Knows nothing of learning, the daemon or the CLI; the CL engine and the KV-cache path sit on it.
"""

from .codec import Record, decode_blob, decode_record, encode_blob, encode_record
from .errors import (BadRecordError, BudgetError, CorruptRecordError, DamagedStoreError, ForkError,
                     SchemaTooNewError, StoreError)
from .flash import POLICIES, SCHEMA_VERSION, SYNC_MODES, FlashTier, PutResult, SampleSpec
from .ram import RamTier
from .swap import SwapEngine
from .tier import RamBlobTier, Tier

__all__ = [
    "Record", "encode_record", "decode_record", "encode_blob", "decode_blob",
    "StoreError", "BadRecordError", "BudgetError", "CorruptRecordError", "DamagedStoreError", "ForkError",
    "SchemaTooNewError",
    "FlashTier", "SampleSpec", "PutResult", "SCHEMA_VERSION", "SYNC_MODES", "POLICIES",
    "RamTier", "SwapEngine", "RamBlobTier", "Tier",
]
