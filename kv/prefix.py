"""Persistent prefix reuse (LMCache's idea, kept across restarts): the KV of a ``full`` cache's
prompt, cut into chunks of ``chunk`` tokens, stored in the flash tier under a hash chain
h_i = sha256(h_{i-1} | model identity | tokens of chunk i) -- a chunk's key names its whole prefix --
so a new process reuses the KV of a prompt prefix it has seen instead of recomputing it. Each stored
block carries its sha256: a damaged block is a miss (recomputed), never used. A byte cap evicts
suffixes before prefixes (deepest chunks first, oldest among them).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Optional

import numpy as np
import torch

NS, IDX = "kvprefix", "kvprefix.idx"


class PrefixStore:
    def __init__(self, tier, model_id: str, n_layers: int, chunk: int = 16, capacity_bytes: Optional[int] = None):
        self.tier, self.model_id, self.n_layers, self.chunk = tier, model_id, n_layers, chunk
        self.capacity = capacity_bytes
        self.stats = {"hits": 0, "misses": 0, "damaged": 0, "stored": 0, "evicted": 0}

    def chain(self, tokens) -> list:
        """Hash of every full chunk of ``tokens`` (a list of ints), each naming its whole prefix."""
        out, h = [], hashlib.sha256(f"miro-kv|{self.model_id}|{self.chunk}".encode()).digest()
        for i in range(len(tokens) // self.chunk):
            part = np.asarray(tokens[i * self.chunk:(i + 1) * self.chunk], dtype=np.int64).tobytes()
            h = hashlib.sha256(h + part).digest()
            out.append(h.hex())
        return out

    def _meta(self, h: str) -> Optional[dict]:
        raw = self.tier.get(IDX, h)
        return None if raw is None else json.loads(raw)

    def lookup(self, tokens, limit: Optional[int] = None) -> list:
        """Per layer, the (K, V) blocks of the longest stored prefix of ``tokens`` (at most ``limit``
        chunks), each verified; [] on a miss. A damaged block ends the prefix there."""
        hashes = self.chain(tokens)[:limit]
        got = [[] for _ in range(self.n_layers)]
        n = 0
        for i, h in enumerate(hashes):
            meta = self._meta(h)
            if meta is None:
                break
            blocks = []
            for layer in range(self.n_layers):
                buf = self.tier.get(NS, f"{h}:{layer}")
                if buf is None or hashlib.sha256(buf).hexdigest() != meta["sha256"][layer]:
                    blocks = None
                    break
                arr = np.frombuffer(buf, dtype=np.float32).copy()
                k, v = torch.from_numpy(arr).view(2, *meta["shape"]).unbind(0)  # (B, Hkv, chunk, hd) each
                blocks.append((k, v))
            if blocks is None:
                self.stats["damaged"] += 1
                self._drop(h)  # never used again; the caller recomputes from here
                break
            for layer in range(self.n_layers):
                got[layer].append(blocks[layer])
            n = i + 1  # a hit writes nothing: a read path with an fsync per chunk cost more than recomputing
        self.stats["hits"] += n
        self.stats["misses"] += int(n < len(hashes))
        return got if n else []

    def store(self, tokens, kv_of_layer) -> int:
        """Store the chunks of ``tokens`` not stored yet; ``kv_of_layer(layer)`` -> (K, V) of at least
        the full chunks' tokens (B, Hkv, S, hd). Returns chunks written."""
        hashes = self.chain(tokens)
        written = 0
        for i, h in enumerate(hashes):
            if self._meta(h) is not None:
                continue
            sl = slice(i * self.chunk, (i + 1) * self.chunk)
            digests, shape, nbytes = [], None, 0
            for layer in range(self.n_layers):
                K, V = kv_of_layer(layer)
                blk = torch.stack([K[:, :, sl], V[:, :, sl]]).contiguous().float()  # (2, B, Hkv, chunk, hd)
                shape = list(blk.shape[1:])
                buf = blk.numpy().tobytes()
                self.tier.put(NS, f"{h}:{layer}", buf)
                digests.append(hashlib.sha256(buf).hexdigest())
                nbytes += len(buf)
            # the index entry goes last: a block without one is never read (a kill mid-store loses nothing)
            self.tier.put(IDX, h, json.dumps({"depth": i, "shape": shape, "sha256": digests, "bytes": nbytes,
                                              "used": time.time(), "model": self.model_id}).encode())
            written += 1
        self.stats["stored"] += written
        self._enforce_cap()
        return written

    def entries(self) -> list:
        """Every stored chunk: hash, depth in its chain, tokens, bytes, when last stored, model identity."""
        out = []
        for k in self.tier.keys(IDX):
            h = k.decode() if isinstance(k, bytes) else k
            m = self._meta(h)
            if m is not None:  # shape is (B, Hkv, chunk, hd): the chunk's tokens are its third axis
                out.append({"hash": h, "tokens": m["shape"][2],
                            **{x: m[x] for x in ("depth", "bytes", "used", "model")}})
        return out

    def _drop(self, h: str):
        meta = self._meta(h)
        layers = len(meta["sha256"]) if meta else self.n_layers  # the chunk's own count (a store opened blind)
        self.tier.delete(IDX, h)  # unindexed first: no reader takes a half-deleted chunk
        for layer in range(layers):
            self.tier.delete(NS, f"{h}:{layer}")

    def _enforce_cap(self):
        if self.capacity is None:
            return
        entries = self.entries()
        used = sum(e["bytes"] for e in entries)
        for e in sorted(entries, key=lambda e: (-e["depth"], e["used"])):  # suffixes first, then oldest
            if used <= self.capacity:
                break
            self._drop(e["hash"])
            used -= e["bytes"]
            self.stats["evicted"] += 1

    def clear(self) -> int:
        entries = self.entries()
        for e in entries:
            self._drop(e["hash"])
        return len(entries)


def summarize(entries: list) -> dict:
    """Stored chunks grouped by what their keys hash (the model's identity and the chunk size: a prompt
    is reused only within its group), with totals per group and overall: chunks, tokens, bytes, and
    prompt starts (chunks at depth 0, one per distinct first chunk of a stored prompt)."""
    groups: dict = {}
    for e in entries:
        g = groups.setdefault((e["model"], e["tokens"]), {
            "model": e["model"], "chunk_tokens": e["tokens"], "chunks": 0, "tokens": 0, "bytes": 0,
            "prompt_starts": 0, "longest_prefix_tokens": 0, "last_used": 0.0})
        g["chunks"] += 1
        g["tokens"] += e["tokens"]
        g["bytes"] += e["bytes"]
        g["prompt_starts"] += e["depth"] == 0
        g["longest_prefix_tokens"] = max(g["longest_prefix_tokens"], (e["depth"] + 1) * e["tokens"])
        g["last_used"] = max(g["last_used"], e["used"])
    rows = sorted(groups.values(), key=lambda g: (-g["bytes"], g["model"]))
    total = {k: sum(g[k] for g in rows) for k in ("chunks", "tokens", "bytes", "prompt_starts")}
    return {"groups": rows, "total": {"groups": len(rows), **total}}
