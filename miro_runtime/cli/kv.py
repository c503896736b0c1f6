"""``miro kv``: KV-cache inference on the RAM + flash tiers, in-process (``generate``, ``prefixes``) or
through the running daemon (``generate --daemon``). The KV engine (and torch) is imported inside the
commands; every failure goes through ``control.fail`` (one line, a sysexits code, a JSON error object
with --json)."""

from __future__ import annotations

import json
import os
import time

import click

from miro_runtime.choices import KV_POLICIES
from miro_runtime.cli.control import call, fail
from miro_runtime.cli.render import emit
from miro_runtime.kv.names import BUILTIN_MODELS, PRETRAINED_MODELS, STATE_SUBDIR, describe_model

EXIT_FAILED = 1  # a failure the message names (the disk, a damaged store), as `miro --help` lists
EXIT_USAGE = 2  # a flag or its value is wrong: click's own code for a usage error
# the daemon decides these itself ([kv] table); given with --daemon they would be silently ignored
IN_PROCESS_ONLY = ("model_name", "policy_opts", "cold_dir", "store_dir", "prefix_cap", "seed", "model_cache",
                   "block_tokens")


@click.group()
def kv():
    """KV-cache inference on the RAM + flash tiers (built-in decoder, SmolLM2-135M from its package, or a
    local transformers model)."""


def _flag(ctx, name: str) -> str:
    """The command-line spelling of parameter ``name`` (``model_name`` -> ``--model``)."""
    return next(p.opts[0] for p in ctx.command.params if p.name == name)


def _given(ctx, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def _shown(text: str) -> str:
    """``text`` safe on a terminal: a random-init model emits any byte, control characters included,
    so those are escaped (\\x1b, \\r, ...); newlines and tabs stay."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def _prompt(ctx, prompt, prompt_file) -> bytes:
    if (prompt is None) == (prompt_file is None):
        fail(ctx, "kv generate: give exactly one of --prompt and --prompt-file; e.g. --prompt \"hello\"", EXIT_USAGE)
    if prompt_file is not None:
        try:
            with open(prompt_file, "rb") as f:
                text = f.read()
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            fail(ctx, f"kv generate: --prompt-file {prompt_file}: {why}; give a readable file", EXIT_USAGE)
    else:
        text = prompt.encode()
    if not text:
        fail(ctx, f"kv generate: the prompt {'file ' + prompt_file + ' ' if prompt_file else ''}is empty; give at "
             "least one character", EXIT_USAGE)
    return text


@kv.command()
@click.option("--model", "model_name", default=BUILTIN_MODELS[0], show_default=True,
              help=f"{describe_model(BUILTIN_MODELS[0])} | " + " | ".join(PRETRAINED_MODELS) + " (real weights from "
              "an installed package, dequantised once into --model-cache; the gguf extra) | a local transformers "
              "model directory (llm extra; --policy full only).")
@click.option("--model-cache", "model_cache", default=None, metavar="DIR",
              help="Where pretrained models are dequantised (default: $MIRO_MODEL_CACHE, else "
              "$XDG_CACHE_HOME/miro/models, else ~/.cache/miro/models).")
@click.option("--policy", default="full", show_default=True, help="How the KV fits the hot budget: " +
              " | ".join(KV_POLICIES) + " (full: lossless, cold layers go to flash; the others evict tokens).")
@click.option("--policy-opt", "policy_opts", multiple=True, metavar="KEY=VALUE",
              help="A policy's own option, repeatable: sink: sinks; h2o: recent; cascade: sinks, levels, beta; "
              "topk: k, group, refresh, sinks, recent, slots, beam (blocks; k, slots, beam 0: sized by the budget).")
@click.option("--hot-budget", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bytes of KV in hot memory (0: all hot). full: the planner puts the rest in the LMDB tier.")
@click.option("--prompt", default=None, help="The prompt text (bytes are the built-in model's tokens).")
@click.option("--prompt-file", default=None, metavar="FILE", help="Read the prompt from FILE instead.")
@click.option("--max-new-tokens", default=32, show_default=True, type=int, help="Tokens to generate (at least 1).")
@click.option("--cold-dir", default="", help="LMDB directory for cold layers (default: --store, or a temporary one).")
@click.option("--store", "store_dir", default="", help="Persistent LMDB directory: prompt prefixes are reused across "
              "processes (lossless policy).")
@click.option("--prefix-cap", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bytes of stored prefixes kept (0: no cap); suffixes are evicted before prefixes.")
@click.option("--block-tokens", default=16, show_default=True, type=click.IntRange(min=1),
              help="Tokens per KV block (the unit that goes cold, is fetched, evicted and reused as a prefix).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the built-in model's random weights.")
@click.option("--daemon", "via_daemon", is_flag=True, help="Ask the running mirod over its control socket (its "
              "[kv] model and shares apply; --policy and --hot-budget are passed on when given).")
@click.option("--slo-tpot-ms", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MS",
              help="With --daemon: this request's target mean time per output token (default: kv.slo_tpot_ms).")
@click.option("--slo-tbt-ms", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MS",
              help="With --daemon: this request's target time between two tokens (default: kv.slo_tbt_ms).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with \"text\") as the last stdout "
              "line, and nothing else on stdout.")
@click.pass_context
def generate(ctx, model_name, model_cache, policy, policy_opts, hot_budget, prompt, prompt_file, max_new_tokens,
             cold_dir, store_dir, prefix_cap, block_tokens, seed, via_daemon, slo_tpot_ms, slo_tbt_ms, as_json):
    """Greedy generation through the tiered KV cache: the text on stdout, how it was made (model,
    tokens, speed, where the KV lived) on stderr. The built-in model has random weights: its text is
    noise that exercises the cache, not language; smollm2-135m is a real (small) language model."""
    text = _prompt(ctx, prompt, prompt_file)
    if max_new_tokens < 1:
        fail(ctx, f"kv generate: --max-new-tokens {max_new_tokens}: at least 1 token is generated; give 1 or more",
             EXIT_USAGE)
    if policy not in KV_POLICIES:
        fail(ctx, f"kv generate: --policy {policy}: not a KV policy; choose one of {', '.join(KV_POLICIES)}",
             EXIT_USAGE)
    if via_daemon:
        ignored = [_flag(ctx, n) for n in IN_PROCESS_ONLY if _given(ctx, n)]
        if ignored:
            fail(ctx, f"kv generate: {', '.join(ignored)} apply to in-process generation, and --daemon uses the "
                 "daemon's [kv] table; leave them out, or leave out --daemon", EXIT_USAGE)
        params = {"prompt": text.decode("utf-8", "replace"), "max_new_tokens": max_new_tokens}
        if _given(ctx, "policy"):
            params["policy"] = policy
        if hot_budget:
            params["hot_budget"] = hot_budget
        for k, v in (("slo_tpot_ms", slo_tpot_ms), ("slo_tbt_ms", slo_tbt_ms)):
            if v is not None:
                params[k] = v
        res = call(ctx, "kv_generate", **params)
    else:
        given = [_flag(ctx, n) for n in ("slo_tpot_ms", "slo_tbt_ms") if _given(ctx, n)]
        if given:
            fail(ctx, f"kv generate: {', '.join(given)}: targets are for the daemon's concurrent requests; add "
                 "--daemon, or leave them out", EXIT_USAGE)
        for name, where in (("store_dir", store_dir), ("cold_dir", cold_dir)):
            if where and os.path.exists(where) and not os.path.isdir(where):
                fail(ctx, f"kv generate: {_flag(ctx, name)} {where}: not a directory; give a directory (made when "
                     "missing)", EXIT_USAGE)
        from miro_runtime.kv.generate import run_generate
        from miro_runtime.kv.policies import parse_options
        from miro_runtime.storage import StoreError
        try:
            res = run_generate(model_name, text, max_new_tokens, policy, hot_budget, cold_dir, seed=seed,
                               store_dir=store_dir, prefix_cap=prefix_cap or None, block_tokens=block_tokens,
                               policy_opts=parse_options(policy, policy_opts), model_cache=model_cache)
        except (ValueError, StoreError) as e:  # the input named (a flag, a model, a store)
            fail(ctx, f"kv generate: {e}", EXIT_USAGE)
        except OSError as e:  # the disk or a model's files, not a flag
            why = " ".join((e.strerror or str(e)).split())  # one line, whatever the library wrote
            fail(ctx, f"kv generate: {e.filename or 'reading or writing'}: {why}; check that path and the free "
                 "space on it", EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"model: {res['model']}", err=True)
    if res.get("model_note"):
        click.echo(f"note: {res['model_note']}", err=True)
    if res.get("tokenizer"):
        click.echo(f"tokens: {res['tokenizer']}", err=True)
    click.echo(_shown(res["text"]))
    tps = res["tokens_per_s"]
    click.echo(f"{res['new_tokens']} tokens" + (f", {tps:.1f} tokens/s" if tps else "") +
               f", first token {res['ttft_s'] * 1e3:.0f} ms, KV hot {res['hot_bytes']:,} B / cold "
               f"{res['cold_bytes']:,} B ({res['policy']}), {res['prefix_hits']} prefix chunks reused", err=True)
    if res.get("served") == "together":  # the daemon's concurrent path: its wait and its targets
        met = []
        if res.get("slo_tpot_ms"):
            met.append(f"TPOT {res['tpot_ms'] or 0:.1f} ms vs {res['slo_tpot_ms']:g} ms "
                       f"({'met' if res['tpot_met'] else 'missed'})")
        if res.get("slo_tbt_ms") and res.get("tbt_met") is not None:
            met.append(f"{100 * res['tbt_met']:.0f}% of token gaps within {res['slo_tbt_ms']:g} ms")
        click.echo(f"served with the daemon's other requests: queued {res['queued_s'] or 0:.3f} s, deferred "
                   f"{res['deferrals']} times" + ("; " + ", ".join(met) if met else ""), err=True)


@kv.command()
@click.option("--model", "model_name", required=True, type=click.Choice(PRETRAINED_MODELS),
              help="The pretrained model to dequantise.")
@click.option("--model-cache", "model_cache", default=None, metavar="DIR",
              help="Where to put it (default: $MIRO_MODEL_CACHE, else $XDG_CACHE_HOME/miro/models, else "
              "~/.cache/miro/models).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (model, dir).")
@click.pass_context
def prepare(ctx, model_name, model_cache, as_json):
    """Dequantise a pretrained model from its installed package into the model cache now (a first
    `kv generate` does it otherwise) and print the directory: a transformers model directory too, so
    `kv generate --model DIR` runs it through the transformers adapter."""
    from miro_runtime.packaged import AssetMissing
    try:
        from miro_runtime.kv.pretrained import prepare as build
        where = build(model_name, model_cache)
    except (ImportError, AssetMissing, ValueError) as e:  # a package missing (its pip line named), or not the model
        fail(ctx, f"kv prepare: --model {model_name}: {e}", EXIT_USAGE)
    except OSError as e:  # the disk: the cache dir not writable, no space
        why = " ".join((e.strerror or str(e)).split())
        fail(ctx, f"kv prepare: {e.filename or 'writing the model cache'}: {why}; check that path and the free "
             "space on it", EXIT_FAILED)
    emit({"model": model_name, "dir": where}, as_json, lambda r: click.echo(r["dir"]))


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _human_prefixes(r: dict, show_chunks: bool) -> None:
    where = f"{r['store']}" + (" (the daemon's)" if r["daemon_store"] else "")
    if not r["exists"]:
        click.echo(f"no KV store at {where} yet: mirod keeps prompt prefixes there from its first "
                   "`miro kv generate --daemon` (kv.reuse_prefixes)")
        return
    if not r["groups"]:
        click.echo(f"no stored prefixes in {where}")
        return
    click.echo(f"KV prefixes in {where}, grouped by model and chunk size (a prefix is reused within its group):")
    for g in r["groups"]:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(g["last_used"]))
        click.echo(f"  {g['model']}, {g['chunk_tokens']}-token chunks: {_n(g['chunks'], 'chunk')}, "
                   f"{_n(g['tokens'], 'token')}, {g['bytes']:,} B; {_n(g['prompt_starts'], 'prompt start')}, "
                   f"longest prefix {_n(g['longest_prefix_tokens'], 'token')}; last stored {used}")
        if show_chunks:
            for x in sorted((x for x in r["prefixes"] if x["model"] == g["model"] and x["tokens"] == g["chunk_tokens"]),
                            key=lambda x: (x["depth"], x["hash"])):
                click.echo(f"    {x['hash'][:16]}  depth {x['depth']}  {x['tokens']} tokens  {x['bytes']:,} B")
    t = r["total"]
    click.echo(f"total: {_n(t['groups'], 'group')}, {_n(t['chunks'], 'chunk')}, {_n(t['tokens'], 'token')}, "
               f"{t['bytes']:,} B ({t['bytes'] / 2**20:.1f} MiB), {_n(t['prompt_starts'], 'prompt start')}")


@kv.command()
@click.argument("action", type=click.Choice(["list", "clear"]), default="list")
@click.option("--store", "store_dir", default=None, metavar="DIR",
              help=f"The KV store's directory (default: the daemon's, STATE_DIR/{STATE_SUBDIR}; STATE_DIR from "
              "--state-dir or MIRO_STATE_DIR).")
@click.option("--chunks", "show_chunks", is_flag=True, help="list: every stored chunk too, under its group.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (groups, totals, every chunk).")
@click.pass_context
def prefixes(ctx, action, store_dir, show_chunks, as_json):
    """List (the default) or clear the prompt prefixes kept in a KV store: the daemon's unless --store
    names another (the directory of `miro kv generate --store`). list groups them by model with totals."""
    from miro_runtime.wire.client import default_state_dir
    daemon_store = store_dir is None
    if daemon_store:
        store_dir = os.path.join((ctx.find_root().obj or {}).get("state_dir") or default_state_dir(), STATE_SUBDIR)
    store_dir = os.path.abspath(store_dir)
    out = {"store": store_dir, "daemon_store": daemon_store,
           "exists": os.path.exists(os.path.join(store_dir, "data.mdb"))}
    if not out["exists"] and not daemon_store:
        why = "no such directory" if not os.path.isdir(store_dir) else "no data.mdb there"
        fail(ctx, f"kv prefixes: --store {store_dir}: not a KV store ({why}); give a directory that `miro kv "
             "generate --store` wrote, or leave --store out for the daemon's", EXIT_USAGE)
    rows = []
    if out["exists"]:
        rows = _entries(ctx, store_dir)
    if action == "clear":
        emit({**out, "cleared": _clear(ctx, store_dir) if rows else 0}, as_json,
             lambda r: click.echo(f"cleared {r['cleared']} stored prefix chunks from {r['store']}"))
        return
    from miro_runtime.kv.prefix import summarize
    emit({**out, **summarize(rows), "prefixes": rows, "bytes": sum(r["bytes"] for r in rows)}, as_json,
         lambda r: _human_prefixes(r, show_chunks))


def _entries(ctx, store_dir: str) -> list:
    """The store's prefix chunks, read without writing (the daemon may hold the store open)."""
    from miro_runtime.kv.prefix import PrefixStore
    from miro_runtime.storage import FlashTier, StoreError
    try:
        tier = FlashTier(store_dir, readonly=True)
    except StoreError as e:
        fail(ctx, f"kv prefixes: {e}", EXIT_USAGE)
    try:
        return PrefixStore(tier, "", 0).entries()
    except (StoreError, ValueError, KeyError) as e:  # an index entry that is not one: a store of something else
        fail(ctx, f"kv prefixes: {store_dir}: its prefix index is not readable ({e}); `miro kv prefixes clear "
             "--store DIR` drops it", EXIT_FAILED)
    finally:
        tier.close()


def _clear(ctx, store_dir: str) -> int:
    from miro_runtime.kv.generate import KV_SYNC
    from miro_runtime.kv.prefix import PrefixStore
    from miro_runtime.storage import FlashTier, StoreError
    try:
        tier = FlashTier(store_dir, sync_mode=KV_SYNC)
    except StoreError as e:
        fail(ctx, f"kv prefixes: {e}", EXIT_USAGE)
    try:
        return PrefixStore(tier, "", 0).clear()
    finally:
        tier.close()
