"""Property-based: every valid value of `miro run`'s options is taken exactly as given, every invalid
one refused with its flag's name (and no valid flag named); every folder tree in a supported layout is a
stream of exactly its images, every other one a StreamError saying why.

What is valid is written down here, from the flags' help and README, not read from the validator."""
import math
import os
import re
import shutil
import tempfile

import click
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from miro_runtime.cli.options import config_from_options
from miro_runtime.cli.run import run
from miro_runtime.engine.streams import StreamError, make_stream

DEFAULTS = {p.name: p.default for p in run.params if p.name != "as_json"}
VALID_FLOAT = {  # finite, and:
    "lr": lambda v: v > 0,
    "swap_ratio": lambda v: 0 <= v <= 1,
    "swap_group_ms": lambda v: v >= 0,
    "miro_budget": lambda v: 0 < v <= 1,  # a share of the previous task's energy
    "miro_ram_floor_mb": lambda v: v >= 0,
    "miro_battery_floor": lambda v: v >= 0,
}
LEAST_INT = {"memory": 0, "epochs": 1, "batch_size": 1, "tasks": 1, "checkpoint_every": 0, "threads": 0, "seed": 0,
             "swap_workers": 1, "flash_budget": 0}  # --flash-budget 0: unbounded
DEVICES = {"cpu": True, "auto": True, "cuda": True, "cuda:0": True, "cuda:12": True, "mps": True,
           "gpu": False, "": False, "cuda:x": False, "mps0": False, "CPU": False}
SHAPES = {"1,16,16": True, "3,32,32": True, " 1, 8 ,8": True, "0,8,8": False, "1,-2,3": False, "1,8": False,
          "2,2,2,2": False, "a,b": False}  # valid for --stream synthetic
UNPARSED = {"a,b"}  # not integers: refused as the flag is read, whatever the stream
NAMED = list(VALID_FLOAT) + list(LEAST_INT) + ["device", "synthetic_shape"]
# valid values often (a refusal must not be the only outcome tested), the edges exactly, anything a float can be
FLOATS = hs.one_of(hs.floats(allow_nan=True, allow_infinity=True), hs.floats(0, 1), hs.floats(0, 1e4),
                   hs.sampled_from([0.0, -0.0, 1.0, 5e-324, -1e-9, 1 + 1e-9, 1e308]))


def flags_named(msg: str) -> set:
    return {k for k in NAMED if re.search(r"(?<![\w-])--" + k.replace("_", "-") + r"(?![\w-])", msg)}


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(hs.dictionaries(hs.sampled_from(list(VALID_FLOAT)), FLOATS, max_size=3),
       hs.dictionaries(hs.sampled_from(list(LEAST_INT)), hs.integers(-3, 10 ** 6), max_size=3),
       hs.sampled_from(sorted(d for d in DEVICES if DEVICES[d])) | hs.sampled_from(sorted(DEVICES)),
       hs.sampled_from(sorted(s for s in SHAPES if SHAPES[s])) | hs.sampled_from(sorted(SHAPES)),
       hs.sampled_from(["split-digits", "synthetic"]))
def test_valid_options_are_taken_as_given_and_invalid_ones_refused_by_name(floats, ints, device, shape, stream):
    o = {**DEFAULTS, **floats, **ints, "device": device, "synthetic_shape": shape, "stream": stream,
         "run_dir": "unused"}
    nonfinite = {k for k, v in floats.items() if not math.isfinite(v)}
    invalid = ({k for k, v in floats.items() if k in nonfinite or not VALID_FLOAT[k](v)}
               | {k for k, v in ints.items() if v < LEAST_INT[k]}
               | ({"device"} if not DEVICES[device] else set())
               | ({"synthetic_shape"} if shape in UNPARSED or (stream == "synthetic" and not SHAPES[shape]) else set()))
    try:
        cfg = config_from_options(o)
    except (click.BadParameter, ValueError) as e:
        msg = e.format_message() if isinstance(e, click.BadParameter) else str(e)
        named = flags_named(msg) | ({"synthetic_shape"} if getattr(e, "param_hint", None) == "--synthetic-shape"
                                    else set())
        assert invalid, f"valid options refused: {msg}"
        assert named and named <= invalid, f"names {sorted(named)}, the invalid ones are {sorted(invalid)}: {msg}"
        # each problem is listed, but for two that make the rest unknowable: a shape that is not integers
        # (refused as it is read) and a number that is not finite (every range check after it is meaningless)
        want = {"synthetic_shape"} if shape in UNPARSED else nonfinite or invalid
        assert named == want, f"names {sorted(named)}, should name {sorted(want)}: {msg}"
        return
    assert not invalid, f"accepted although invalid: {sorted(invalid)} in {o}"
    for k, v in floats.items():  # accepted: nothing reinterpreted
        assert getattr(cfg, k) == v
    for k, v in ints.items():
        want = None if (k == "flash_budget" and v == 0) else v  # documented: 0 means unbounded
        assert getattr(cfg, k) == want
    assert cfg.device == device
    if stream == "synthetic":
        assert list(cfg.synthetic["shape"]) == [int(c) for c in shape.split(",")]


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
        # what the layouts (README, LAYOUTS) promise: hidden entries and file-manager junk are skipped;
        # task folders fix the number of tasks, class folders split into 1..len(classes) tasks; all images
        # of one stream have one size
        if layout == "tasks":
            tasks_ok = tasks is None or tasks == min(n_tasks, len(classes))
        else:
            tasks_ok = tasks is None or 1 <= tasks <= len(classes)
        try:
            s = make_stream("folder", data_dir=root, tasks=tasks)
        except StreamError as e:
            msg = str(e)
            assert msg.startswith("folder stream"), msg
            assert not tasks_ok or odd, f"a valid {layout} tree refused: {msg}"
            assert (f"--tasks {tasks}" in msg) if not tasks_ok else "differs from the stream's" in msg, msg
            return
        assert tasks_ok and not odd, f"accepted: {layout}, --tasks {tasks}, odd sizes {odd}"
        got = sum(len(y) for _, y in s.train) + (0 if layout == "imagefolder" else sum(len(y) for _, y in s.test))
        assert got == n
        assert sorted(s.info["class_names"]) == classes
        if tasks is not None:
            assert len(s.train) == tasks
    finally:
        shutil.rmtree(root, ignore_errors=True)
