"""Property-based: any value of `miro run`'s options is either taken exactly as given or refused
with the flag's name; any folder tree is either a stream of exactly its images or a StreamError."""
import math
import os
import shutil
import tempfile

import click
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from miro_runtime.cli.main import config_from_options, run
from miro_runtime.engine.streams import StreamError, make_stream

DEFAULTS = {p.name: p.default for p in run.params if p.name != "as_json"}
NUMBERS = hs.one_of(hs.integers(-5, 10 ** 12), hs.floats(allow_nan=True, allow_infinity=True))
FLOAT_OPTS = ("lr", "swap_ratio", "swap_group_ms", "miro_budget", "miro_ram_floor_mb", "miro_battery_floor")
INT_OPTS = ("memory", "epochs", "batch_size", "tasks", "checkpoint_every", "threads", "seed", "swap_workers",
            "flash_budget")


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(hs.dictionaries(hs.sampled_from(FLOAT_OPTS), hs.floats(allow_nan=True, allow_infinity=True), max_size=3),
       hs.dictionaries(hs.sampled_from(INT_OPTS), hs.integers(-3, 10 ** 6), max_size=3),
       hs.sampled_from(["cpu", "auto", "cuda:0", "gpu", "", "cuda:x", "mps0"]),
       hs.sampled_from(["1,16,16", "3,32,32", "0,8,8", "a,b", "1,-2,3", "1,8", "2,2,2,2"]),
       hs.sampled_from(["split-digits", "synthetic"]))
def test_options_are_taken_as_given_or_refused_by_name(floats, ints, device, shape, stream):
    o = {**DEFAULTS, **floats, **ints, "device": device, "synthetic_shape": shape, "stream": stream,
         "run_dir": "unused"}
    try:
        cfg = config_from_options(o)
    except click.BadParameter as e:
        assert "--synthetic-shape" in e.format_message() or e.param_hint == "--synthetic-shape"
        return
    except ValueError as e:
        msg = str(e)
        named = [k for k in list(floats) + list(ints) + ["device", "synthetic_shape", "synthetic_classes"]
                 if "--" + k.replace("_", "-") in msg]
        assert named, f"error names no flag: {msg}"
        return
    for k, v in floats.items():  # accepted: nothing reinterpreted
        assert math.isfinite(v) and getattr(cfg, k) == v
    for k, v in ints.items():
        want = None if (k == "flash_budget" and v == 0) else v  # documented: 0 means unbounded
        assert getattr(cfg, k) == want
    assert cfg.device == device


LAYOUT = hs.sampled_from(["flat", "tasks", "imagefolder"])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(LAYOUT, hs.integers(1, 4), hs.lists(hs.integers(1, 3), min_size=1, max_size=4),
       hs.lists(hs.sampled_from([".hidden", "notes.txt", "Thumbs.db", "__MACOSX"]), max_size=3),
       hs.one_of(hs.none(), hs.integers(0, 5)), hs.booleans())
def test_folder_trees_become_exactly_their_images_or_a_stream_error(layout, n_tasks, per_class, junk, tasks, odd):
    from PIL import Image
    root = tempfile.mkdtemp()
    try:
        n = 0
        classes = [f"c{i}" for i in range(len(per_class))]
        for ci, (c, k) in enumerate(zip(classes, per_class)):
            if layout == "flat":
                dirs = [os.path.join(root, c)]
            elif layout == "tasks":
                dirs = [os.path.join(root, f"t{ci % n_tasks}", c)]
            else:
                dirs = [os.path.join(root, "train", c), os.path.join(root, "test", c)]
            for d in dirs:
                os.makedirs(d, exist_ok=True)
                for i in range(k + 1):
                    Image.fromarray(np.full((6, 6 + (odd and i == k), ), 9 * i, np.uint8)).save(
                        os.path.join(d, f"{i}.png"))
                    n += d.find(os.sep + "test" + os.sep) < 0
                for j in junk:
                    p = os.path.join(d, j)
                    os.makedirs(p, exist_ok=True) if j == "__MACOSX" else open(p, "w").close()
        try:
            s = make_stream("folder", data_dir=root, tasks=tasks)
        except StreamError as e:
            assert str(e).startswith("folder stream"), str(e)
            return
        got = sum(len(y) for _, y in s.train) + (0 if layout == "imagefolder" else sum(len(y) for _, y in s.test))
        assert got == n and not odd
        assert sorted(s.info["class_names"]) == classes
    finally:
        shutil.rmtree(root, ignore_errors=True)
