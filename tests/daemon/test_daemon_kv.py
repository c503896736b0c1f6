"""KV-cache generation served by a real mirod over its control socket: the [kv] table's RAM and
flash shares bound every request, status reports them, prompt prefixes persist in <state_dir>/kv
across requests and restarts, and the socket answers bad requests with named errors."""
import json
import signal
import subprocess
import time

import pytest
from daemon_util import PY, Mirod

from miro_runtime.wire import protocol as P
from miro_runtime.wire.client import DaemonError

PROMPT = "the daemon lends its RAM and flash tiers to a decoder; this prompt is long enough for chunks"


def test_generation_over_the_socket_within_the_kv_share(tmp_path):
    from miro_runtime.kv.generate import run_generate
    want = run_generate("builtin-tiny", PROMPT.encode(), 16)["tokens"]  # in-process, all hot
    d = Mirod(tmp_path / "s", "kv.ram_bytes=60000", "kv.flash_bytes=4000000").start()
    try:
        st = d.call("status")["kv"]
        assert st["enabled"] and st["ram_bytes"] == 60000 and st["flash_bytes"] == 4000000
        assert st["requests"] == 0 and st["model_loaded"] is False  # nothing loaded before it is asked for
        first = d.call("kv_generate", prompt=PROMPT, max_new_tokens=16)
        assert first["tokens"] == want and first["prefix_hits"] == 0
        assert first["hot_bytes"] <= 60000 and first["cold_bytes"] > 0  # the share forced layers to flash
        second = d.call("kv_generate", prompt=PROMPT, max_new_tokens=16)
        assert second["tokens"] == want and second["prefix_hits"] == (len(PROMPT) - 1) // 16
        lossy = d.call("kv_generate", prompt=PROMPT * 3, max_new_tokens=8, policy="h2o", hot_budget=30000)
        assert lossy["policy"] == "h2o" and lossy["hot_bytes"] <= 30000
        st = d.call("status")["kv"]
        assert st["requests"] == 3 and st["tokens"] == 40 and st["prefix_chunks"] == (len(PROMPT) - 1) // 16
        assert st["flash_cold_bytes"] == 0  # a finished generation's cold blocks are gone; prefixes stay
        assert 0 < st["flash_prefix_bytes"] <= 4000000 and st["last"]["policy"] == "h2o"
        for params, needle in [({"prompt": ""}, "prompt"), ({"prompt": "x", "hot_budget": 70000}, "kv.ram_bytes"),
                               ({"prompt": "x", "max_new_tokens": 100000}, "kv.max_new_tokens"),
                               ({"prompt": "x", "policy": "lru"}, "policy"), ({"prompt": "x", "temp": 1}, "temp")]:
            with pytest.raises(DaemonError) as e:
                d.call("kv_generate", **params)
            assert e.value.code == P.INVALID_PARAMS and needle in e.value.message, (params, e.value.message)
        d.call("config_set", key="kv.policy", value="sink")  # live: the next request's default
        assert d.call("status")["kv"]["policy"] == "sink"
        d.call("config_set", key="kv.enabled", value="false")
        with pytest.raises(DaemonError) as e:
            d.call("kv_generate", prompt="x")
        assert e.value.code == P.NOT_READY and "kv.enabled" in e.value.message
        d.call("config_set", key="kv.enabled", value="true")
        d.call("config_set", key="kv.policy", value="full")
    finally:
        assert d.kill(signal.SIGTERM) == 0
    from miro_runtime.storage import FlashTier
    with FlashTier(str(tmp_path / "s" / "kv")) as t:  # what a daemon killed mid-generation leaves behind
        t.put("kv", "builtin/L0/B0", bytes(4096))
    d = Mirod(tmp_path / "s").start()  # a restart: the stored prefixes are still used (shares from overrides)
    try:
        r = subprocess.run([PY, "-m", "miro_runtime.cli", "--socket", d.sock, "kv", "generate", "--daemon",
                            "--prompt", PROMPT, "--max-new-tokens", "16", "--json"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["tokens"] == want and out["prefix_hits"] == (len(PROMPT) - 1) // 16
        assert any(e.get("event") == "kv_generate" for e in d.logs())
        st = d.call("status")["kv"]
        assert st["stale_blocks_deleted"] == 1 and st["flash_cold_bytes"] == 0
    finally:
        assert d.kill(signal.SIGTERM) == 0


def test_concurrent_requests_decode_together_and_a_tightened_target_defers_them(tmp_path):
    """Three clients at once: their lossless requests decode together in one server (each gets the tokens it
    gets alone); `config set kv.slo_tbt_ms` tightened while they run defers all but one and resumes them in
    turn; status shows the queue, attainment and deferrals; the log has the plans, deferrals, resumes and
    SLO misses."""
    import threading

    from miro_runtime.kv.generate import run_generate
    prompts = [PROMPT * (1 + i) for i in range(3)]
    want = [run_generate("builtin-tiny", p.encode(), 200)["tokens"] for p in prompts]
    d = Mirod(tmp_path / "s", "kv.reuse_prefixes=false").start()
    try:
        d.call("kv_generate", prompt="warm", max_new_tokens=2)  # the model loaded before the three arrive
        got, errors = {}, []

        def ask(i):
            try:
                with d.client() as c:
                    got[i] = c.call("kv_generate", prompt=prompts[i], max_new_tokens=200)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(repr(e))
        clients = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for c in clients:
            c.start()
        seen = []
        while len(got) + len(errors) < 3:
            sv = d.call("status")["kv"]["serving"] or {}
            states = [r["state"] for r in sv.get("queue", [])]
            seen.append(states)
            if states.count("decode") >= 2 and d.call("config_show")["config"]["kv"]["slo_tbt_ms"] == 0:
                d.call("config_set", key="kv.slo_tbt_ms", value="0.001")  # no two steps fit in 1 us
            time.sleep(0.01)
        for c in clients:
            c.join(60)
        assert not errors, errors
        assert [got[i]["tokens"] for i in range(3)] == want  # together, deferred or not: the tokens of alone
        assert all(got[i]["served"] == "together" for i in range(3))
        assert any(s.count("decode") >= 2 for s in seen) and any("deferred" in s for s in seen)
        assert sum(got[i]["deferrals"] for i in range(3)) >= 1
        sv = d.call("status")["kv"]["serving"]
        assert sv["deferrals"] >= 1 and sv["resumes"] == sv["deferrals"] and sv["served"] == 4 and not sv["queue"]
        assert sv["attainment"]["tbt"] is not None and sv["attainment"]["tbt"] < 1
        r = subprocess.run([PY, "-m", "miro_runtime.cli", "--socket", d.sock, "status"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "kv serving" in r.stdout and "TBT 0.001 ms" in r.stdout, r.stdout
        assert f"{sv['deferrals']} deferrals" in r.stdout
        kinds = [e["event"] for e in d.logs()]
        for k in ("kv_plan", "kv_deferred", "kv_resumed", "kv_slo_miss"):
            assert k in kinds, k
    finally:
        assert d.kill(signal.SIGTERM) == 0


def test_the_kv_table_loads_validates_and_documents_itself(tmp_path):
    from miro_runtime.daemon.config import ConfigError, default_toml, load
    cfg = load(None, str(tmp_path), env={"MIROD_KV_RAM_BYTES": "123456", "MIROD_KV_POLICY": "cascade"})
    assert cfg.kv.ram_bytes == 123456 and cfg.kv.policy == "cascade"
    for env, needle in [({"MIROD_KV_POLICY": "lru"}, "kv.policy"), ({"MIROD_KV_RAM_BYTES": "0"}, "kv.ram_bytes"),
                        ({"MIROD_KV_FLASH": "1"}, "unknown key 'kv.flash'")]:
        with pytest.raises(ConfigError, match=needle):
            load(None, str(tmp_path), env=env)
    text = default_toml()
    assert "[kv]" in text and "flash_bytes = 268435456 # (live)" in text


def test_tiers_delete_many_in_one_go(tmp_path):
    from miro_runtime.storage import FlashTier, RamBlobTier
    for tier in (FlashTier(str(tmp_path / "f")), RamBlobTier()):
        tier.put_many("ns", [(f"k{i}", bytes(10 + i)) for i in range(5)])
        per = (tier.bytes_used("ns") - sum(range(10, 15))) // 5  # a record's framing (the flash tier's checksum)
        assert tier.delete_many("ns", ["k0", "k2", "nope"]) == 2
        left = 11 + 13 + 14 + 3 * per
        assert tier.bytes_used("ns") == left and tier.get("ns", "k1") == bytes(11)
        assert tier.get("ns", "k0") is None
        if isinstance(tier, FlashTier):
            tier.close()
            tier = FlashTier(str(tmp_path / "f"))  # the byte count survives a reopen
            assert tier.bytes_used("ns") == left
            tier.close()
