"""miro-runtime: on-device continual learning over a RAM + flash memory hierarchy.

Library first: ``run(RunConfig(...))`` runs a whole experiment in-process, ``Session`` learns from
data as it arrives; the CLI (`miro`) and the daemon (`mirod`) are thin shells over them. Names are
imported on first use, so control commands (`miro status`) never load torch.
"""

__version__ = "0.1.0"

_LAZY = {"RunConfig": "config", "Experiment": "session.experiment", "run": "session.experiment",
         "Learner": "engine.learner", "Session": "session.session", "Stream": "engine.streams",
         "StreamError": "engine.streams", "from_arrays": "engine.streams", "make_stream": "engine.streams",
         "Client": "wire.client"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'miro_runtime' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
