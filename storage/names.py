"""The flash tier's allowed values, in a module that imports nothing (control commands and config
checks read them without loading lmdb or numpy)."""

EVICTION_POLICIES = ("class-balanced", "reservoir")  # which sample a full namespace gives up
SYNC_MODES = {
    "sync": dict(sync=True, metasync=True),  # acknowledged = committed and fsynced
    "metasync-off": dict(sync=True, metasync=False),  # a crash may undo the last commit
    "nosync": dict(sync=False, metasync=False),  # a crash may lose the last commits
}
