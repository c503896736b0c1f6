"""REP on a real dataset (issue 22): bench/rep.py's accuracy part on split Fashion-MNIST, 28x28 images in 4x4
patches (49 tokens), on a per-class subset that is the same for every seed (bench/rep.py ``STREAMS``). The
cost part at 224x224 does not depend on the data and is bench/rep.py's. Its own section, so the digits result
stays beside it. Last line of stdout: one JSON object.

REP's options here (``OPTS``): the swift query is the backbone's own first 2 blocks' [CLS] and ALD's floor
theta_bar is 0.8. They were chosen by probes (seeds 0-4, another pretraining of the same backbone) after the
micro-ViT query with theta_bar 0.5 lost 11 points to l2p; the judged seeds (``FIRST_SEED`` on) are ones the
probes never ran."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rep  # noqa: E402

MEASURES = (*rep.MEASURES, "bench/rep.py")  # its accuracy part is rep.py's code
OPTS = ("query_backbone=", "query_layers=2", "theta_bar=0.8")
FIRST_SEED = 20
# the l2p pair also runs these (fixed before their run): 5 seeds left its gap (-1.0 +- 2.3 on 2e94f0d) unable
# to tell +-1.5; seeds 25-42 were spent on a probe of that pair, so are not among them
MORE_SEEDS = "l2p=45-59"
WHY = ("- REP's options on this stream (`bench/rep_fmnist.py` OPTS) were chosen by probes, not by this run: with "
       "the micro-ViT swift query and ALD's floor theta_bar 0.5 (the digits configuration) rep-l2p lost 11.1 ± 1.0 "
       "points to l2p here and rep-dualprompt 6.6 ± 2.2. Taken one part at a time on seeds 0-4 (another "
       "pretraining of this backbone), the loss came from the second task's head calibration under L2P's "
       "train-time mask, moved by the query and by ALD's shallower training net; the [CLS] of the backbone's own "
       "first 2 blocks selects prompts better than the micro ViT or the last block does on these classes, and a "
       "milder ALD keeps the step under 0.7x. Seeds {seeds} judged here are ones the probes never ran.")
WHY_MORE = (" l2p and rep-l2p also run seeds {more} (`MORE_SEEDS`, fixed before this run): on seeds 20-24 "
            "alone (commit 2e94f0d) rep-l2p's gap was -1.0 ± 2.3, an interval too wide to tell ±1.5; a probe of "
            "the pair on seeds 25-42, outside `make bench`, moved us to run more, so those seeds are not among the "
            "judged ones.")


def render(r) -> str:
    text = rep.render(r)
    a = r.get("accuracy")
    if a and a.get("rep_opts"):
        text += "\n" + WHY.format(seeds=a["seeds"])
        more = a.get("more_seeds", {}).get("l2p")
        if more:
            text += WHY_MORE.format(more=f"{more[0]}-{more[-1]}")
    return text


if __name__ == "__main__":
    opts = [x for o in OPTS for x in ("--rep-opt", o)]
    rep.main(["--stream", "split-fashion-mnist", "--no-cost", "--first-seed", str(FIRST_SEED), *opts,
              "--more-seeds", MORE_SEEDS, *sys.argv[1:]])
