"""``miro fleet``: the server side of a fleet of boards on Flower (server, status, register) and a demo of one on
this machine. A board joins through its own mirod's ``[fleet]`` table; nothing of Flower is imported here until a
command runs."""

from __future__ import annotations

import json
import os
import sys

import click

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".local", "state", "miro-fleet")


@click.group()
def fleet():
    """A fleet of boards learning together through Flower: each mirod keeps its data and learns with CarM,
    a server averages their models class by class. Boards join with mirod's [fleet] table."""


@fleet.command(name="server")
@click.option("--dir", "dir_", default=DEFAULT_DIR, show_default=True, help="The server's state: Flower's home, "
              "the app bundle, status.json, superlink.log.")
@click.option("--address", default="127.0.0.1:9092", show_default=True, help="host:port the SuperLink serves "
              "(boards' fleet.superlink).")
@click.option("--ca-cert", default="", help="TLS: the CA certificate (PEM).")
@click.option("--cert", default="", help="TLS: the SuperLink's certificate (PEM).")
@click.option("--key", default="", help="TLS: the SuperLink's private key (PEM).")
@click.option("--node-auth", is_flag=True, help="Only boards whose public keys are registered may join (needs TLS).")
@click.option("--insecure", is_flag=True, help="No TLS: only on 127.0.0.1 (a test or a demo).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds of the federation (each: local training on every board, aggregation, adoption).")
@click.option("--min-boards", type=click.IntRange(min=1), default=2, show_default=True,
              help="Boards whose replies must fit for a round to aggregate; the run waits for this many.")
@click.option("--wait-boards", type=click.IntRange(min=0), default=0,
              help="Boards to wait for before round 1, if more than --min-boards.")
@click.option("--local-steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="Training steps each board runs per round on its own stored samples.")
@click.option("--round-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds a round waits for replies; a board that misses it is left out of that round.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
def server(dir_, address, ca_cert, cert, key, node_auth, insecure, rounds, min_boards, wait_boards, local_steps,
           round_timeout, as_json):
    """Start a SuperLink and run the fleet's rounds: each round every connected board trains locally, the
    server aggregates (class-aligned FedAvg) and sends each board its view of the result. Stops when the rounds
    are done (Ctrl-C stops it sooner)."""
    from miro_runtime.fleet.server import FleetError, FleetServer, ServerConfig
    cfg = ServerConfig(dir=dir_, address=address, insecure=insecure, ca_cert=ca_cert, cert=cert, key=key,
                       node_auth=node_auth, rounds=rounds, min_boards=min_boards, wait_boards=wait_boards,
                       local_steps=local_steps,
                       round_timeout_s=round_timeout)
    try:
        srv = FleetServer(cfg)
    except FleetError as e:
        raise click.UsageError(str(e)) from None
    try:
        srv.start()
        click.echo(f"SuperLink on {address} ({'insecure' if insecure else 'TLS'}"
                   f"{', node authentication' if node_auth else ''}), pid {srv.proc.pid}; state in {dir_}", err=True)
        run_id = srv.submit()
        click.echo(f"run {run_id}: {rounds} rounds, waiting for {min_boards} boards", err=True)
        final = srv.wait(run_id, timeout=rounds * (round_timeout * 2 + 60) + cfg.wait_boards_s,
                         on_round=lambda e: click.echo(_round_line(e), err=True))
    except FleetError as e:
        click.echo(f"miro fleet server: {e}", err=True)
        sys.exit(1)
    finally:
        srv.stop()
    if as_json:
        click.echo(json.dumps(final))
    ok = str(final.get("flower", {}).get("status")) == "finished:completed"
    if not ok:
        click.echo(f"the run ended {final.get('flower')}", err=True)
    sys.exit(0 if ok else 1)


def _round_line(e: dict) -> str:
    failed = f"; failed {e['failed']}" if e.get("failed") else ""  # each board's refusal, in its own words
    if not e.get("aggregated"):
        return f"round {e['round']}: not aggregated: {e.get('error')}{failed}"
    acc = e.get("mean_acc")
    return (f"round {e['round']}: boards {', '.join(e['boards'])}; global classes {len(e['global_classes'])}; "
            f"mean accuracy {'-' if acc is None else f'{100 * acc:.1f}%'}; sent {e['bytes_sent']} B, received "
            f"{e['bytes_received']} B" + (f"; rejected {e['rejected']}" if e.get("rejected") else "")
            + failed)


@fleet.command(name="status")
@click.option("--dir", "dir_", default=DEFAULT_DIR, show_default=True, help="The server's state directory.")
@click.option("--json", "as_json", is_flag=True, help="Print status.json as it is.")
def status(dir_, as_json):
    """The fleet as the server sees it: boards, rounds, global classes, accuracy per round."""
    from miro_runtime.fleet.server import STATUS_FILE, read_status
    st = read_status(os.path.join(dir_, STATUS_FILE))
    if st is None:
        click.echo(f"no fleet status in {dir_} (start one with `miro fleet server --dir {dir_}`)", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(st))
        return
    click.echo(f"state {st['state']}; rounds {len(st['rounds'])} of {st['rounds_planned']}; "
               f"global classes {st['global_classes']}")
    for b, v in sorted(st["boards"].items()):
        acc = v.get("acc")
        click.echo(f"  {b}: labels {v['labels']}, last round {v['last_round']}, accuracy "
                   f"{'-' if acc is None else f'{100 * acc:.1f}%'}")
    for e in st["rounds"]:
        click.echo("  " + _round_line(e))


@fleet.command(name="register")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False))
@click.option("--dir", "dir_", default=DEFAULT_DIR, show_default=True, help="The server's state directory.")
@click.option("--name", default="", help="The board's name in the registry.")
def register(public_key, dir_, name):
    """Register a board's public key (`miro fleet keygen`'s .pub) with the running SuperLink (--node-auth)."""
    import subprocess

    from miro_runtime.daemon.supernode import flower_env, flower_program
    from miro_runtime.fleet.server import CONNECTION
    exe = flower_program("flwr")
    if exe is None:
        raise click.UsageError("flwr is not installed: pip install 'miro-runtime[fleet]'")
    cmd = [exe, "supernode", "register", public_key, CONNECTION] + (["--name", name] if name else [])
    r = subprocess.run(cmd, env=flower_env(os.path.join(dir_, "flwr")), capture_output=True, text=True)
    click.echo((r.stdout + r.stderr).strip())
    sys.exit(r.returncode)


@fleet.command(name="keygen")
@click.argument("private_key", type=click.Path(dir_okay=False))
def keygen(private_key):
    """A board's node key pair: PRIVATE_KEY (mode 0600, the board's fleet.auth_key) and PRIVATE_KEY.pub (register
    it on the server with `miro fleet register`). ECDSA P-384, OpenSSH format, as Flower reads them."""
    from miro_runtime.fleet.keys import node_keys
    click.echo(node_keys(private_key))


@fleet.command(name="certs")
@click.option("--out", "out_dir", required=True, help="Where ca.pem, ca.key, server.pem and server.key go.")
@click.option("--host", "hosts", multiple=True, required=True,
              help="A name or IP address boards reach the SuperLink by (repeat for several).")
def certs(out_dir, hosts):
    """A private CA and a SuperLink certificate signed by it, for a fleet without a PKI of its own: the server
    takes --ca-cert ca.pem --cert server.pem --key server.key, every board fleet.root_certificates = ca.pem."""
    from miro_runtime.fleet.keys import server_certs
    for p in server_certs(out_dir, list(hosts)).values():
        click.echo(p)


@fleet.command(name="demo")
@click.option("--boards", type=click.IntRange(min=2, max=10), default=2, show_default=True,
              help="Boards (mirods), each holding the digits d with d % boards == its index.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Rounds of the federation.")
@click.option("--local-steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="Training steps each board runs per round on its own stored samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="The boards' learning.seed.")
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs, state dirs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def demo(boards, rounds, local_steps, seed, keep, as_json):
    """A fleet on this machine: a SuperLink and N mirods, each learning its own digits alone, then federated;
    each board's accuracy on all ten digits before and after. Everything is stopped by PID at the end."""
    from miro_runtime.fleet.demo import run_fleet_demo
    out = run_fleet_demo(boards=boards, rounds=rounds, local_steps=local_steps, seed=seed, keep=keep,
                         say=lambda s: click.echo(s, err=True))
    rounds_ok = [e.get("aggregated") for e in (out.get("server") or {}).get("rounds") or []]
    ok = out.get("flower_status") == "finished:completed" and len(rounds_ok) == rounds and all(rounds_ok)
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"isolated {100 * out['isolated_acc']:.1f}% -> federated {100 * out['federated_acc']:.1f}% "
                   f"(mean over {boards} boards, all ten digits); {out['wall_s']} s")
    sys.exit(0 if ok else 1)
