"""`miro kv` as a new user meets it (issue 20): generate prints the text (stats and how the text was made
on stderr), the built-in model says its weights are random wherever it is named, `kv prefixes` reads
the daemon's KV store by default and groups what it holds with totals, and every error is one
`miro: ...` line (a JSON error object with --json) naming only flags the command has."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from daemon_util import Mirod

from miro_runtime.cli.kv import generate, prefixes, prepare
from miro_runtime.cli.main import main

MIRO = [sys.executable, "-m", "miro_runtime.cli"]
PROMPT = "a prompt long enough to fill a few sixteen-token chunks of the prefix store"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def miro(*args, env=None, timeout=120):
    e = {k: v for k, v in os.environ.items() if k not in ("MIRO_SOCKET", "MIRO_STATE_DIR")}
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=timeout, env={**e, **(env or {})})


def test_generate_prints_the_text_on_stdout_and_says_how_it_was_made(tmp_path):
    r = miro("kv", "generate", "--prompt", PROMPT, "--max-new-tokens", "24")
    assert r.returncode == 0, r.stderr
    j = miro("kv", "generate", "--prompt", PROMPT, "--max-new-tokens", "24", "--json")
    out = json.loads(j.stdout)  # the only stdout line
    assert out["new_tokens"] == 24 and out["text"] and len(j.stdout.strip().splitlines()) == 1
    # stdout is the text (control bytes escaped: a random model emits any byte), nothing else
    shown = "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in out["text"])
    assert r.stdout == shown + "\n"
    assert "tokens/s" in r.stderr and "24 tokens" in r.stderr and "tokens/s" not in r.stdout
    note = "random-init weights: the text is noise; it exercises the cache, not language"
    assert out["model_note"] == note and f"note: {note}" in r.stderr
    assert out["tokenizer"].startswith("byte-level") and "tokens: byte-level" in r.stderr


def test_the_builtin_model_says_it_is_random_init_in_help_and_status(tmp_path):
    from miro_runtime.kv.service import KVService, KVShare
    h = CliRunner().invoke(main, ["kv", "generate", "-h"])
    assert h.exit_code == 0 and "builtin-tiny (random-init weights: the text is noise" in " ".join(h.output.split())
    st = KVService(str(tmp_path / "kv"), KVShare()).status()  # what the daemon's status carries for its kv line
    assert st["model"] == "builtin-tiny" and st["model_note"].startswith("random-init weights")
    assert KVService(str(tmp_path / "kv"), KVShare(model="/some/dir")).status()["model_note"] is None


def test_prefixes_reads_the_daemons_store_by_default_grouped_with_totals(tmp_path):
    sdir = tmp_path / "s"
    empty = miro("kv", "prefixes", "--json", env={"MIRO_STATE_DIR": str(sdir)})  # before the daemon wrote any
    assert empty.returncode == 0, empty.stderr
    e = json.loads(empty.stdout)
    assert e["store"] == str(sdir / "kv") and e["exists"] is False and e["total"]["chunks"] == 0
    d = Mirod(sdir, "kv.ram_bytes=60000").start()
    try:
        d.call("kv_generate", prompt=PROMPT, max_new_tokens=4)
        d.call("kv_generate", prompt=PROMPT[::-1] + " and a little more", max_new_tokens=4)
        st = d.call("status")["kv"]
        # the daemon still holds the store open: the listing reads it without writing
        r = miro("kv", "prefixes", "--state-dir", str(sdir), "--json")  # global flag after the subcommand
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        human = miro("kv", "prefixes", "list", env={"MIRO_STATE_DIR": str(sdir)})
    finally:
        assert d.kill(signal.SIGTERM) == 0
    assert out["store"] == str(sdir / "kv") and out["daemon_store"] is True
    n1, n2 = (len(PROMPT) - 1) // 16, (len(PROMPT) + 18 - 1) // 16  # full chunks short of the last token
    total = out["total"]
    assert total == {"groups": 1, "chunks": n1 + n2, "tokens": 16 * (n1 + n2), "bytes": total["bytes"],
                     "prompt_starts": 2}
    # the KV itself; the store's figure adds each block's checksummed header
    assert total["bytes"] == sum(p["bytes"] for p in out["prefixes"]) and 0 < total["bytes"] < st["flash_prefix_bytes"]
    assert st["prefix_chunks"] == n1 + n2
    (g,) = out["groups"]
    assert g["model"].startswith("builtin-tiny") and g["chunk_tokens"] == 16 and g["chunks"] == n1 + n2
    assert g["longest_prefix_tokens"] == 16 * max(n1, n2) and len(out["prefixes"]) == n1 + n2
    assert human.returncode == 0 and "(the daemon's)" in human.stdout
    assert f"total: 1 group, {n1 + n2} chunks, {16 * (n1 + n2)} tokens" in human.stdout


def test_prefixes_groups_an_explicit_store_and_clears_it(tmp_path):
    store = tmp_path / "store"
    for seed in ("0", "1"):  # another seed: other weights, so another group (its prefixes never mix)
        r = miro("kv", "generate", "--store", str(store), "--prompt", PROMPT, "--max-new-tokens", "2", "--seed", seed)
        assert r.returncode == 0, r.stderr
    out = json.loads(miro("kv", "prefixes", "--store", str(store), "--json").stdout)
    n = (len(PROMPT) - 1) // 16
    assert [g["chunks"] for g in out["groups"]] == [n, n] and out["total"]["groups"] == 2
    assert out["total"]["chunks"] == 2 * n and out["total"]["bytes"] == sum(g["bytes"] for g in out["groups"])
    c = miro("kv", "prefixes", "clear", "--store", str(store), "--json")
    assert c.returncode == 0 and json.loads(c.stdout)["cleared"] == 2 * n
    assert json.loads(miro("kv", "prefixes", "--store", str(store), "--json").stdout)["total"]["chunks"] == 0


def _options(command) -> set:
    return {o for p in command.params for o in p.opts + p.secondary_opts if o.startswith("--")} | \
        {o for p in main.params for o in p.opts if o.startswith("--")}  # the group's flags go after it too


def _bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "a-file").write_bytes(b"x")
    return [
        (generate, ["--model", "no-such-model", "--prompt", "x"]),
        (generate, ["--prompt-file", str(tmp_path / "missing.txt")]),
        (generate, ["--prompt-file", str(tmp_path)]),
        (generate, ["--prompt-file", str(tmp_path / "empty.txt")]),
        (generate, ["--prompt", ""]),
        (generate, []),
        (generate, ["--prompt", "x", "--policy", "lru"]),
        (generate, ["--prompt", "x", "--policy", "sink", "--hot-budget", "9000", "--policy-opt", "window=3"]),
        (generate, ["--prompt", "x", "--policy", "sink", "--hot-budget", "9000", "--policy-opt", "sinks=-1"]),
        (generate, ["--prompt", "x", "--policy", "sink", "--hot-budget", "9000", "--policy-opt", "sinks"]),
        (generate, ["--prompt", "x", "--policy", "sink", "--hot-budget", "9000", "--policy-opt", "sinks=x"]),
        (generate, ["--prompt", "x", "--policy-opt", "k=2"]),
        (generate, ["--prompt", "x", "--policy", "cascade", "--hot-budget", "9000", "--policy-opt", "span=0"]),
        (generate, ["--prompt", "x", "--policy", "cascade", "--hot-budget", "9000", "--policy-opt", "per_head=maybe"]),
        (generate, ["--prompt", "x", "--policy", "sink"]),
        (generate, ["--prompt", "x", "--hot-budget", "100"]),
        (generate, ["--prompt", "x", "--policy", "topk", "--hot-budget", "2000"]),
        (generate, ["--prompt", "x", "--max-new-tokens", "0"]),
        (generate, ["--prompt", "x", "--store", str(tmp_path / "a-file")]),
        (generate, ["--prompt", "x", "--store", str(tmp_path / "s"), "--policy", "h2o", "--hot-budget", "9000"]),
        (generate, ["--prompt", "x", "--daemon", "--seed", "3", "--cold-dir", str(tmp_path)]),
        (prefixes, ["--store", str(tmp_path / "nowhere")]),
        (prefixes, ["clear", "--store", str(tmp_path)]),
    ]


def test_bad_input_gets_one_line_naming_only_flags_the_command_has(tmp_path):
    for command, argv in _bad_inputs(tmp_path):
        r = CliRunner().invoke(main, ["kv", command.name, *argv])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (argv, r.output)  # no other exception
        (line,) = r.stderr.splitlines()
        assert re.fullmatch(rf"miro: kv {command.name}: .+; .+", line), line  # <what>: <why>; <what to do>
        flags = set(FLAG.findall(line))
        assert flags <= _options(command), (argv, line, flags - _options(command))
        j = CliRunner().invoke(main, ["kv", command.name, *argv, "--json"])
        assert j.exit_code == 2 and json.loads(j.stdout)["error"] == {"message": line[len("miro: "):],
                                                                      "exit_code": 2, "code": None}


def test_a_directory_transformers_cannot_load_is_named_not_a_traceback(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text("{not json")
    r = CliRunner().invoke(main, ["kv", "generate", "--model", str(tmp_path), "--prompt", "x"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert r.stderr.startswith(f"miro: kv generate: --model {tmp_path}: ") and "not a valid JSON file" in r.stderr
    assert r.stderr.rstrip().endswith("; give a directory that transformers can load")


def test_every_flag_named_in_kv_strings_is_an_option_of_a_kv_command():
    """The messages no test triggers too: every `--flag` in a string of kv/ or cli/kv.py is a flag of
    `miro kv generate`, `miro kv prefixes` or the group (what the daemon's kv_generate says reaches the
    user as the message of `miro kv generate --daemon`)."""
    import ast
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = [os.path.join(repo, "miro_runtime", "cli", "kv.py")]
    for d, _, names in os.walk(os.path.join(repo, "kv")):
        files += [os.path.join(d, n) for n in names if n.endswith(".py")]
    known = _options(generate) | _options(prefixes) | _options(prepare) | {"--help"}
    named = {}
    for path in files:
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if "pip install" in node.value:
                    continue  # an install line's flags are pip's (--no-deps), not ours
                for flag in FLAG.findall(node.value):
                    named.setdefault(flag, set()).add(os.path.relpath(path, repo))
    assert {"--hot-budget", "--policy-opt", "--store", "--model"} <= set(named)  # the scan sees the messages
    assert {f: where for f, where in named.items() if f not in known} == {}
