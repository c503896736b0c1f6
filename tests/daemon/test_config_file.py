"""The daemon's configuration file (issue 20, "the CLI people expect"): byte sizes with units, every
problem of a bad file reported at once, `none` for unset, and the shipped example mirod.toml, which
must be exactly what the generator (``default_toml``, `miro config show --defaults`) prints today."""
import os
import sys

import pytest

from miro_runtime.config import parse_bytes
from miro_runtime.daemon.config import ConfigError, default_toml, load, read_overrides, write_overrides

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "mirod.toml")


@pytest.mark.parametrize("text,n", [("4096", 4096), ("10MiB", 10 << 20), ("512KiB", 512 << 10), ("1GB", 10**9),
                                    ("1.5KiB", 1536), ("2 MB", 2 * 10**6), ("7B", 7)])
def test_byte_sizes_take_units(text, n):
    assert parse_bytes(text) == n


def test_byte_size_keys_read_units_from_toml_env_and_refuse_a_bad_unit_by_name(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('[kv]\nram_bytes = "512KiB"\nflash_bytes = 1048576\n[daemon]\nlog_max_bytes = "1GB"\n')
    cfg = load(str(f), str(tmp_path), env={"MIROD_DAEMON_MAX_MESSAGE_BYTES": "32MiB"})
    assert (cfg.kv.ram_bytes, cfg.kv.flash_bytes, cfg.daemon.log_max_bytes, cfg.daemon.max_message_bytes) == \
        (512 << 10, 1 << 20, 10**9, 32 << 20)
    with pytest.raises(ConfigError) as e:
        load(None, str(tmp_path), env={"MIROD_KV_RAM_BYTES": "10MiX"})
    assert "kv.ram_bytes" in str(e.value) and "unknown unit 'MiX'" in str(e.value)
    with pytest.raises(ConfigError, match="learning.memory"):  # only byte sizes take units
        load(None, str(tmp_path), env={"MIROD_LEARNING_MEMORY": "10KiB"})


def test_a_bad_file_reports_all_its_problems_at_once(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[learning]\nmemory = "lots"\nbogus = 1\n[kv]\nram_bytes = "3 parsecs"\n')
    with pytest.raises(ConfigError) as e:
        load(str(f), str(tmp_path), env={})
    msg = str(e.value)
    for needle in ("learning.memory='lots'", "unknown key 'learning.bogus'", "kv.ram_bytes='3 parsecs'"):
        assert needle in msg, msg
    f.write_text('[learning]\nepochs = 0\nmemory = "x"\n')  # a set error and a validation error together
    with pytest.raises(ConfigError) as e:
        load(str(f), str(tmp_path), env={"MIROD_SESSION_SNAPSHOT_EVERY": "no"})
    for needle in ("learning.memory", "epochs must be >= 1", "MIROD_SESSION_SNAPSHOT_EVERY"):
        assert needle in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:  # a value is quoted as TOML writes it, not as Python's repr
        load(None, str(tmp_path), env={"MIROD_LEARNING_STRATEGY": "bogus"})
    assert 'learning.strategy = "bogus" is not one of' in str(e.value)


def test_none_unsets_an_optional_setting_and_round_trips_through_overrides(tmp_path):
    path = str(tmp_path / "overrides.toml")
    write_overrides(path, {"learning": {"flash_budget": None, "method": {"k": 3}, "backbone": None}})
    text = open(path).read()
    assert "None" not in text and 'flash_budget = "none"' in text
    assert read_overrides(path)["learning"]["method"] == {"k": 3}
    cfg = load(None, str(tmp_path), env={})
    assert cfg.learning.flash_budget is None and cfg.learning.backbone is None and cfg.learning.method == {"k": 3}
    cfg = load(None, str(tmp_path), env={"MIROD_LEARNING_FLASH_BUDGET": "500"})
    assert cfg.learning.flash_budget == 500
    cfg = load(None, str(tmp_path), env={"MIROD_DAEMON_INBOX_DIR": "none", "MIROD_DAEMON_SOCKET_GROUP": "None"})
    assert cfg.daemon.inbox_dir == "" and cfg.daemon.socket_group == ""  # unset, not a directory named none


def test_the_example_mirod_toml_is_what_the_generator_prints_and_loads(tmp_path):
    with open(EXAMPLE) as fh:
        text = fh.read()
    assert text == default_toml(), "examples/mirod.toml is stale: regenerate it with `miro config show --defaults`"
    data = tomllib.loads(text)
    cfg = load(EXAMPLE, str(tmp_path), env={})
    shown = cfg.to_dict()
    for table, keys in shown.items():
        for k, v in keys.items():
            assert f"\n{k} = " in text or f"\n# {k} = none" in text, (table, k)  # every key documented
            if v is not None and k != "state_dir":
                assert data[table][k] == v, (table, k)
    lines = text.splitlines()
    for i, line in enumerate(lines):  # every key has its help line above it
        if line and not line.startswith(("#", "[")) or line.startswith("# ") and " = " in line and \
                not line.startswith("# mirod"):
            assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 4, line


def test_kv_model_takes_a_model_name_or_a_directory_and_names_both_when_wrong(tmp_path):
    for ok in ("builtin-tiny", "smollm2-135m", str(tmp_path)):
        assert load(None, str(tmp_path), env={"MIROD_KV_MODEL": ok}).kv.model == ok
    with pytest.raises(ConfigError) as e:
        load(None, str(tmp_path), env={"MIROD_KV_MODEL": "smollm2-1.7b"})
    want = "kv.model 'smollm2-1.7b' is neither a model name (builtin-tiny, smollm2-135m) nor a directory"
    assert want in str(e.value)
