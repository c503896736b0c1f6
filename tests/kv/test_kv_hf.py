"""The transformers adapter: ``TieredCache`` is a real transformers 5.x ``Cache``. Greedy generation is
token-identical to transformers' ``DynamicCache`` and to recomputing without a cache, for the built-in
decoder (exported to a ``LlamaForCausalLM`` directory) and a random-init ``LlamaForCausalLM``, with any
layers' KV in a real LMDB flash tier, and the generate path hands the cache by the name forward takes."""

import json
import os
import re
from importlib import metadata

import pytest
import torch


def dev_extra_installed() -> bool:
    """Every other package of setup.cfg's ``dev`` extra is installed: pip installed ``.[dev]`` (as
    ``make test`` does), which brings transformers too."""
    try:
        reqs = metadata.requires("miro-runtime") or []
    except metadata.PackageNotFoundError:
        return False  # run from a bare source tree: nothing says which extras were meant
    dev = [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in reqs
           if re.search(r"extra\s*==\s*['\"]dev['\"]", r)]
    others = [n for n in dev if n.lower() != "transformers"]

    def installed(name):
        try:
            return bool(metadata.version(name))
        except metadata.PackageNotFoundError:
            return False
    return bool(others) and all(installed(n) for n in others)


try:
    import transformers  # noqa: F401
except ImportError as e:
    # where the extra is supposed to be installed a missing transformers is a broken install, not a
    # reason to skip the adapter's tests silently
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true but transformers does not import ({e}): the dev extra installs it", pytrace=False)
    if dev_extra_installed():
        pytest.fail(f"the dev extra is installed but transformers does not import ({e})", pytrace=False)
    pytest.skip(f"transformers is not installed ({e}); pip install -e '.[dev]' (or '.[llm]') to run these",
                allow_module_level=True)
from transformers import DynamicCache, LlamaForCausalLM  # noqa: E402
from transformers import LlamaConfig as HFConfig  # noqa: E402

from miro_runtime.kv.hf import TieredCache, load_local, to_hf  # noqa: E402
from miro_runtime.kv.llama import Llama, LlamaConfig, generate  # noqa: E402
from miro_runtime.storage import FlashTier  # noqa: E402


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = Llama(LlamaConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=172)).eval()
    d = tmp_path_factory.mktemp("hf") / "builtin"
    to_hf(m, str(d))
    return m, str(d)


def _greedy(model, prompt, n, **kw):
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=n, do_sample=False, **kw)[:, prompt.shape[1]:]


@pytest.mark.parametrize("cold_layers", [(), (1, 3), (0, 1, 2, 3)])
def test_builtin_model_through_transformers_matches_recompute_and_dynamic_cache(builtin_dir, tmp_path, cold_layers):
    m, d = builtin_dir
    hf, tok = load_local(d)
    assert tok is None  # no tokenizer files: bytes are tokens
    prompt = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(1))
    want = generate(m, prompt, 16)  # the built-in model, recomputing the whole sequence every step
    assert torch.equal(_greedy(hf, prompt, 16, cache=DynamicCache(config=hf.config)), want)
    tier = FlashTier(str(tmp_path / "kv"))
    cache = TieredCache(hf.config, cold=tier, hot_layers=[i for i in range(4) if i not in cold_layers], block_tokens=8)
    try:
        assert torch.equal(_greedy(hf, prompt, 16, cache=cache), want)
        assert cache.get_seq_length() == 33 + 15
        if cold_layers:
            assert cache.cold_bytes() > 0 and cache.tiered.stats["fetches"] > 0
            assert tier.bytes_used("kv") >= cache.cold_bytes()
    finally:
        cache.close()
        tier.close()


def test_random_init_llama_for_causal_lm_with_cold_layers(tmp_path):
    torch.manual_seed(2)
    hf = LlamaForCausalLM(HFConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=1)).eval()
    prompt = torch.randint(0, 300, (1, 41), generator=torch.Generator().manual_seed(3))
    want = _greedy(hf, prompt, 24, use_cache=False)
    assert torch.equal(_greedy(hf, prompt, 24, cache=DynamicCache(config=hf.config)), want)
    tier = FlashTier(str(tmp_path / "kv"))
    cache = TieredCache(hf.config, cold=tier, hot_layers=[1], block_tokens=16)
    try:
        assert torch.equal(_greedy(hf, prompt, 24, cache=cache), want)
        assert cache.tiered.stats["written_blocks"] == 2 * ((41 + 23) // 16)
    finally:
        cache.close()
        tier.close()


def test_miro_kv_generate_runs_a_local_model_directory(builtin_dir, tmp_path):
    from click.testing import CliRunner

    from miro_runtime.cli.main import main
    m, d = builtin_dir
    prompt = "local models only"
    ref = generate(m, torch.tensor([list(prompt.encode())]), 12)[0].tolist()
    # in-process (the CLI's own code; transformers is already imported here, a subprocess would re-import it)
    r = CliRunner().invoke(main, ["kv", "generate", "--model", d, "--prompt", prompt, "--max-new-tokens", "12",
                                  "--hot-budget", "25000", "--cold-dir", str(tmp_path / "kv"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    assert out["tokens"] == ref and out["placement"]["cold_layers"] and out["cold_bytes"] > 0
    bad = CliRunner().invoke(main, ["kv", "generate", "--model", str(tmp_path), "--prompt", "x"])
    assert bad.exit_code != 0 and "no config.json" in bad.output
    lossy = CliRunner().invoke(main, ["kv", "generate", "--model", d, "--prompt", "x", "--policy", "h2o",
                                      "--hot-budget", "9000"])
    assert lossy.exit_code != 0 and "only --policy full" in lossy.output


class _BeforeTheRename(torch.nn.Module):
    """A causal LM whose forward takes the cache as transformers 5.0-5.23 did (``past_key_values=``, no
    ``cache=``): the real model underneath, called with the name it takes now. The dev extra pins
    transformers >= 5.24, so this is how the adapter's other branch runs here."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0):
        return self.inner(input_ids=input_ids, cache=past_key_values, use_cache=use_cache,
                          logits_to_keep=logits_to_keep)


@pytest.mark.parametrize("before_rename", [False, True])
def test_the_generate_path_hands_the_cache_by_the_name_forward_takes(builtin_dir, tmp_path, before_rename):
    from miro_runtime.kv.generate import HFModel
    m, d = builtin_dir
    model = HFModel(d)
    if before_rename:
        model.model = _BeforeTheRename(model.model)
    prompt = torch.randint(0, 256, (1, 21), generator=torch.Generator().manual_seed(4))
    want = generate(m, prompt, 12)[0].tolist()  # the built-in model, recomputing the whole sequence each step
    tier = FlashTier(str(tmp_path / "kv"))
    cache = model.make_cache(cold=tier, hot_layers=[0, 2], block_tokens=8)
    try:
        with torch.no_grad():
            logits = model.forward(prompt, 0, cache)
            out = [int(logits[0, -1].argmax())]
            while len(out) < 12:
                logits = model.forward(torch.tensor([[out[-1]]]), prompt.shape[1] + len(out) - 1, cache)
                out.append(int(logits[0, -1].argmax()))
        assert model._cache_arg == ("past_key_values" if before_rename else "cache")
        assert out == want  # the cache was used: the cold layers' blocks were written and read back
        assert cache.tiered.stats["fetches"] > 0 and cache.cold_bytes() > 0
    finally:
        cache.close()
        tier.close()
