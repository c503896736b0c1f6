"""miro-runtime: on-device continual learning over a RAM + flash memory hierarchy.

Library first: ``run(RunConfig(...))`` runs a whole experiment in-process; the CLI (`miro`) and
the daemon (`mirod`) are thin shells over it.
"""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .engine import Experiment, run  # noqa: E402
from .streams import Stream, StreamError, from_arrays, make_stream  # noqa: E402

__all__ = ["RunConfig", "Experiment", "run", "Stream", "StreamError", "from_arrays", "make_stream", "__version__"]
