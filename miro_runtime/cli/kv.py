"""``miro kv``: KV-cache inference on the RAM + flash tiers, in-process (``generate``, ``prefixes``) or
through the running daemon (``generate --daemon``). The KV engine is imported inside the commands."""

from __future__ import annotations

import json

import click

from miro_runtime.choices import KV_POLICIES
from miro_runtime.cli.control import call
from miro_runtime.cli.render import emit


@click.group()
def kv():
    """KV-cache inference on the RAM + flash tiers (built-in decoder or a local transformers model)."""


@kv.command()
@click.option("--model", "model_name", default="builtin-tiny", show_default=True,
              help="builtin-tiny (random weights) | a local transformers model directory (llm extra; "
              "--policy full only)")
@click.option("--policy", default="full", show_default=True, help=" | ".join(KV_POLICIES))
@click.option("--policy-opt", "policy_opts", multiple=True, metavar="KEY=VALUE",
              help="A policy's own option, repeatable: sink: sinks; h2o: recent; cascade: sinks, levels, beta; "
              "topk: k, group, refresh, sinks, recent (blocks).")
@click.option("--hot-budget", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bytes of KV in hot memory (0: all hot). full: the planner puts the rest in the LMDB tier.")
@click.option("--prompt", default=None, help="The prompt text (bytes are the built-in model's tokens).")
@click.option("--prompt-file", default=None, type=click.Path(dir_okay=False, exists=True))
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--cold-dir", default="", help="LMDB directory for cold layers (default: --store, or a temporary one).")
@click.option("--store", "store_dir", default="", help="Persistent LMDB directory: prompt prefixes are reused across "
              "processes (lossless policy).")
@click.option("--prefix-cap", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bytes of stored prefixes kept (0: no cap); suffixes are evicted before prefixes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--daemon", "via_daemon", is_flag=True, help="Ask the running mirod over its control socket (its "
              "[kv] model and shares apply; --policy and --hot-budget are passed on when given).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last stdout line.")
@click.pass_context
def generate(ctx, model_name, policy, policy_opts, hot_budget, prompt, prompt_file, max_new_tokens, cold_dir, store_dir,
             prefix_cap, seed, via_daemon, as_json):
    """Greedy generation through the tiered KV cache."""
    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give exactly one of --prompt and --prompt-file")
    text = prompt.encode() if prompt is not None else open(prompt_file, "rb").read()
    if via_daemon:
        if policy_opts:
            raise click.UsageError("--policy-opt applies to in-process generation; the daemon uses the policy's "
                                   "defaults")
        src = ctx.get_parameter_source
        params = {"prompt": text.decode("utf-8", "replace"), "max_new_tokens": max_new_tokens}
        if src("policy") != click.core.ParameterSource.DEFAULT:
            params["policy"] = policy
        if hot_budget:
            params["hot_budget"] = hot_budget
        res = call(ctx, "kv_generate", **params)
    else:
        from miro_runtime.kv.generate import run_generate
        from miro_runtime.kv.policies import parse_options
        try:
            res = run_generate(model_name, text, max_new_tokens, policy, hot_budget, cold_dir, seed=seed,
                               store_dir=store_dir, prefix_cap=prefix_cap or None,
                               policy_opts=parse_options(policy, policy_opts))
        except ValueError as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(res))
    else:
        tps = res["tokens_per_s"]
        click.echo(f"{res['new_tokens']} tokens, {tps:.1f} tokens/s, first token {res['ttft_s'] * 1e3:.0f} ms, "
                   f"KV hot {res['hot_bytes']:,} B / cold {res['cold_bytes']:,} B ({res['policy']})"
                   if tps else f"{res['new_tokens']} tokens")


@kv.command()
@click.argument("action", type=click.Choice(["list", "clear"]))
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
def prefixes(action, store_dir, as_json):
    """List or clear the prompt prefixes kept in a --store directory."""
    from miro_runtime.kv.prefix import PrefixStore
    from miro_runtime.storage import FlashTier, StoreError
    try:
        tier = FlashTier(store_dir)
    except (StoreError, OSError) as e:
        raise click.ClickException(str(e)) from e
    try:
        ps = PrefixStore(tier, "", 0)
        if action == "list":
            rows = ps.entries()
            emit({"prefixes": rows, "bytes": sum(r["bytes"] for r in rows)}, as_json,
                 lambda r: click.echo("\n".join(f"{x['hash'][:16]}  depth {x['depth']}  {x['bytes']:,} B  {x['model']}"
                                      for x in r["prefixes"]) or "no stored prefixes"))
        else:
            emit({"cleared": ps.clear()}, as_json, lambda r: click.echo(f"cleared {r['cleared']} stored prefix chunks"))
    finally:
        tier.close()
