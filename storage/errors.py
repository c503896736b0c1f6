"""Errors raised by the tiered store. Every message names what was wrong (key, namespace, path)."""


class StoreError(Exception):
    """Base class for every store error."""


class BadRecordError(StoreError, ValueError):
    """Input that does not fit a namespace: dtype, shape, label, size. Nothing was written."""


class CorruptRecordError(StoreError):
    """A record read back failed its checksum or header checks."""


class SchemaTooNewError(StoreError):
    """The LMDB file was written by a newer schema than this code understands."""


class BudgetError(StoreError):
    """A record, or the map, cannot fit the configured byte budget."""


class ForkError(StoreError):
    """An LMDB environment was used in a process other than the one that opened it."""


class DamagedStoreError(StoreError):
    """The store's files are damaged (cut short, not LMDB, corrupted pages); the message names the
    file and the next step (salvage, restore, start afresh)."""
