"""The session layer: an open-ended learning session over the engine (``Session``: the front;
``TaskLedger``: task states; ``Trainer``: the training thread; ``LiveStream``: the growing stream),
and whole experiments in-process (``Experiment``, ``run``). Names are imported on first use, so the
daemon's config and the control commands reach ``SessionConfig`` and ``SessionError`` without numpy."""

_LAZY = {"Session": "session", "SessionError": "errors", "SessionConfig": "config", "TaskLedger": "ledger",
         "TaskState": "ledger", "LiveStream": "stream", "Trainer": "trainer", "Experiment": "experiment",
         "run": "experiment"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'miro_runtime.session' has no attribute {name!r}")


__all__ = sorted(_LAZY)
