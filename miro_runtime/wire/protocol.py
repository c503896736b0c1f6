"""The control socket's wire format, shared by mirod and its clients (stdlib only: importing it
never pulls in torch).

Each message is a 4-byte big-endian unsigned length N, then N bytes of UTF-8 JSON. A request is
``{"id", "method", "params"}``; the answer ``{"id", "result"}`` or ``{"id", "error": {"code",
"message"}}``. The framing follows gunicorn's ctl protocol; the error codes follow JSON-RPC where
one fits, and add our own (peer refused, busy, not ready) in the server range.

``ingest`` may carry ``"batch_id"``, a client-chosen string of 1 to 128 bytes (UTF-8). It is committed
in the same transaction as the batch; an ingest whose batch id is already committed stores nothing
and answers ``{"acked": n, "duplicate": true, "task", "split", "first_id", "new_classes", "batch_id"}``
with the original acknowledgement's values. A client that lost an answer (the daemon died between
commit and reply) resends with the same batch id: exactly once. Without a batch id a resend stores
the samples again (at least once). ``labels`` are integers; anything else is refused by name.
"""

from __future__ import annotations

import json
import struct

HEADER = struct.Struct(">I")
DEFAULT_MAX_MESSAGE = 16 << 20  # 16 MiB
# the element types an array in ingest/predict params may have (its "dtype"; "data" is its raw bytes, base64)
DTYPES = ("uint8", "float32", "float64", "int16", "int32", "int64", "uint16")

# error codes
PARSE_ERROR = -32700  # not UTF-8 JSON
INVALID_REQUEST = -32600  # JSON, but not a request object
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TOO_LARGE = -32001  # the frame's length is over the limit; the connection is closed after it
PERMISSION_DENIED = -32002  # SO_PEERCRED: this peer may not call this method
BUSY = -32003  # the flash writer is behind: nothing was stored, try again
NOT_READY = -32004  # e.g. predict before a model exists
STOPPING = -32005  # the daemon is shutting down
CONFLICT = -32006  # the request contradicts the state (ingest into an ended task, ...)
STORE_ERROR = -32007  # the flash tier refused or failed

CODE_NAMES = {PARSE_ERROR: "parse error", INVALID_REQUEST: "invalid request", METHOD_NOT_FOUND: "method not found",
              INVALID_PARAMS: "invalid params", INTERNAL_ERROR: "internal error", TOO_LARGE: "message too large",
              PERMISSION_DENIED: "permission denied", BUSY: "busy", NOT_READY: "not ready", STOPPING: "stopping",
              CONFLICT: "conflict", STORE_ERROR: "store error"}


class ProtocolError(Exception):
    """A request that gets an error response; ``code`` is one of the constants above."""

    def __init__(self, code: int, message: str, close: bool = False):
        super().__init__(message)
        self.code, self.message, self.close = code, message, close


def frame(obj) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return HEADER.pack(len(body)) + body


def parse_request(body: bytes) -> tuple:
    """-> (id, method, params) or raises ProtocolError (with the id when one could be read)."""
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(PARSE_ERROR, f"message is not UTF-8 JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(INVALID_REQUEST, f"a request is a JSON object, got {type(msg).__name__}")
    rid = msg.get("id")
    if rid is not None and not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise ProtocolError(INVALID_REQUEST, "id must be a string, an integer or null")
    method = msg.get("method")
    if not isinstance(method, str) or not method:
        err = ProtocolError(INVALID_REQUEST, "request needs a string 'method'")
        err.id = rid
        raise err
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        err = ProtocolError(INVALID_PARAMS, f"params must be an object, got {type(params).__name__}")
        err.id = rid
        raise err
    return rid, method, params


def error_response(rid, code: int, message: str) -> dict:
    return {"id": rid, "error": {"code": code, "message": message}}
