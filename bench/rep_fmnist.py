"""REP on a real dataset (issue 22): bench/rep.py's accuracy part on split Fashion-MNIST, 28x28 images in 4x4
patches (49 tokens), on a per-class subset that is the same for every seed (bench/rep.py ``STREAMS``). The
cost part at 224x224 does not depend on the data and is bench/rep.py's. Its own section, so the digits result
stays beside it. Last line of stdout: one JSON object."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rep  # noqa: E402

MEASURES = (*rep.MEASURES, "bench/rep.py")  # its accuracy part is rep.py's code
render = rep.render

if __name__ == "__main__":
    rep.main(["--stream", "split-fashion-mnist", "--no-cost", *sys.argv[1:]])
