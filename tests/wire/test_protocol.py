"""The wire format and the client, without a daemon: a real Unix socket served by a thread that
speaks the framing by hand, as a client in another language would see it. The daemon's own
handling of bad frames is tested in tests/daemon/."""
import json
import os
import socket
import struct
import threading

import pytest

from miro_runtime.wire import protocol as P
from miro_runtime.wire.client import Client, DaemonError, NoDaemon, default_socket, default_state_dir


def test_frame_is_a_big_endian_length_then_utf8_json():
    b = P.frame({"id": 1, "method": "ping", "params": {"x": "é"}})
    (n,) = struct.unpack(">I", b[:4])
    assert n == len(b) - 4 and json.loads(b[4:].decode("utf-8")) == {"id": 1, "method": "ping", "params": {"x": "é"}}
    with pytest.raises(ValueError):  # NaN is not JSON: never sent
        P.frame({"x": float("nan")})


@pytest.mark.parametrize("body, code", [
    (b"\xff\xfe", P.PARSE_ERROR), (b"{not json", P.PARSE_ERROR), (b"[1, 2]", P.INVALID_REQUEST),
    (b'{"id": true, "method": "ping"}', P.INVALID_REQUEST), (b'{"id": 3}', P.INVALID_REQUEST),
    (b'{"id": 4, "method": "ping", "params": [1]}', P.INVALID_PARAMS)])
def test_parse_request_names_what_is_wrong(body, code):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(body)
    assert e.value.code == code and e.value.message


def test_parse_request_keeps_the_id_it_could_read_and_defaults_params():
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(b'{"id": "a7", "params": {}}')
    assert e.value.id == "a7"
    assert P.parse_request(b'{"id": 9, "method": "status", "params": null}') == (9, "status", {})
    assert P.parse_request(b'{"method": "status"}') == (None, "status", {})


def test_every_error_code_has_a_name_and_codes_are_distinct():
    codes = [v for k, v in vars(P).items() if k.isupper() and isinstance(v, int) and -32768 <= v <= -32000]
    assert len(codes) == len(set(codes)) and set(codes) == set(P.CODE_NAMES)


def serve_once(path, answer):
    """A one-connection server: reads one frame, records it, sends ``answer(request)`` framed."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    seen = []

    def run():
        conn, _ = srv.accept()
        with conn:
            (n,) = P.HEADER.unpack(conn.recv(4, socket.MSG_WAITALL))
            req = json.loads(conn.recv(n, socket.MSG_WAITALL))
            seen.append(req)
            conn.sendall(answer(req))
        srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, seen


def test_client_call_returns_the_result_and_raises_the_error(tmp_path):
    path = str(tmp_path / "s.sock")
    t, seen = serve_once(path, lambda r: P.frame({"id": r["id"], "result": {"echo": r["params"]}}))
    with Client(path, timeout=10) as c:
        assert c.call("status", verbose=True) == {"echo": {"verbose": True}}
    t.join(10)
    assert seen[0]["method"] == "status" and isinstance(seen[0]["id"], int)
    os.unlink(path)
    t, _ = serve_once(path, lambda r: P.frame(P.error_response(r["id"], P.CONFLICT, "task 3 is not open")))
    with Client(path, timeout=10) as c, pytest.raises(DaemonError) as e:
        c.call("task_end", task=3)
    t.join(10)
    assert e.value.code == P.CONFLICT and e.value.message == "task 3 is not open"


def test_client_refuses_an_oversized_answer_and_a_closed_connection(tmp_path):
    path = str(tmp_path / "s.sock")
    t, _ = serve_once(path, lambda r: P.HEADER.pack(1 << 30))
    with Client(path, timeout=10, max_message=1 << 20) as c, pytest.raises(ConnectionError, match="over the"):
        c.call("status")
    t.join(10)
    os.unlink(path)
    t, _ = serve_once(path, lambda r: b"")
    with Client(path, timeout=10) as c, pytest.raises(ConnectionError, match="closed"):
        c.call("status")
    t.join(10)


def test_no_daemon_is_its_own_error_saying_what_to_do(tmp_path):
    with pytest.raises(NoDaemon, match="miro daemon"):
        Client(str(tmp_path / "nobody.sock"), timeout=2)


def test_default_paths_follow_the_environment(monkeypatch, tmp_path):
    for var in ("MIRO_SOCKET", "RUNTIME_DIRECTORY", "MIRO_STATE_DIR", "STATE_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    assert default_socket(str(tmp_path)) == str(tmp_path / "mirod.sock")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/miro:/other")
    assert default_state_dir() == "/var/lib/miro"
    monkeypatch.setenv("MIRO_STATE_DIR", str(tmp_path))
    assert default_state_dir() == str(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/miro")
    assert default_socket() == "/run/miro/mirod.sock"
    monkeypatch.setenv("MIRO_SOCKET", "/tmp/x.sock")
    assert default_socket() == "/tmp/x.sock"
