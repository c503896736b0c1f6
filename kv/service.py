"""A long-lived KV-cache generation service: what the daemon lends to inference. It owns the KV
namespace's flash tier (its own LMDB environment, so KV writes never wait on the learner's single
LMDB writer), keeps the model loaded between requests, runs one generation at a time within the
namespace's RAM share (the hot budget) and flash share (cold layers + stored prompt prefixes), and
counts what it did for ``status``. It knows nothing of the daemon; the daemon maps its [kv] table
onto ``KVShare`` and calls ``generate`` from a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

from .names import POLICIES, model_note
from .sizes import kv_bytes


@dataclass
class KVShare:
    model: str = "builtin-tiny"
    policy: str = "full"
    ram_bytes: int = 32 << 20  # the hot budget a request may use at most
    flash_bytes: int = 256 << 20  # cold layers of a generation + stored prefixes
    block_tokens: int = 16
    max_new_tokens: int = 512
    reuse_prefixes: bool = True


class KVService:
    def __init__(self, root: str, share: KVShare, model_cache: Optional[str] = None):
        self.root, self.share = root, share
        # a pretrained model is dequantised beside the KV store (<state_dir>/kv/models): the daemon's state
        # stays in one place and its user need not own a home cache directory
        self.model_cache = model_cache or os.path.join(root, "models")
        self._tier, self._model, self._model_name = None, None, None
        self._lock = threading.Lock()  # one generation at a time: the RAM share is one budget
        self.counters = {"requests": 0, "errors": 0, "tokens": 0}
        self.last: Optional[dict] = None
        self.busy = False

    def _open(self):
        if self._tier is None:
            from miro_runtime.storage import FlashTier

            from .generate import KV_SYNC
            os.makedirs(self.root, exist_ok=True)
            self._tier = FlashTier(self.root, sync_mode=KV_SYNC)
            # cold blocks belong to one generation: any found now were left by a process that died in one
            stale = self._tier.keys("kv")
            if stale:
                self._tier.delete_many("kv", stale)
                self.counters["stale_blocks_deleted"] = len(stale)
        if self._model is None or self._model_name != self.share.model:
            from .generate import load_model
            self._model = load_model(self.share.model, cache_root=self.model_cache)
            self._model_name = self.share.model
        return self._tier, self._model

    def check(self, prompt, max_new_tokens, policy, hot_budget) -> tuple:
        """The request's parameters, or a ValueError naming the one that is wrong."""
        s = self.share
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("prompt must be a non-empty string")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if max_new_tokens > s.max_new_tokens:
            raise ValueError(f"max_new_tokens {max_new_tokens} is over kv.max_new_tokens = {s.max_new_tokens}")
        policy = policy or s.policy
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        hot = s.ram_bytes if hot_budget is None else hot_budget
        if isinstance(hot, bool) or not isinstance(hot, int) or hot < 1:
            raise ValueError(f"hot_budget must be an integer >= 1 (bytes), got {hot_budget!r}")
        if hot > s.ram_bytes:
            raise ValueError(f"hot_budget {hot} B is over the KV namespace's RAM share kv.ram_bytes = {s.ram_bytes}")
        return prompt.encode(), max_new_tokens, policy, hot

    def generate(self, prompt, max_new_tokens=32, policy=None, hot_budget=None) -> dict:
        prompt, n, policy, hot = self.check(prompt, max_new_tokens, policy, hot_budget)
        from .generate import run_generate
        with self._lock:
            self.busy = True
            self.counters["requests"] += 1
            try:
                tier, model = self._open()
                # cold layers of this generation must fit the flash share beside the stored prefixes
                layer_bytes = kv_bytes(len(model.encode(prompt)) + n, model.n_kv_heads, model.head_dim)
                cold_need = max(0, layer_bytes * model.n_layers - hot) if policy == "full" else 0
                if cold_need > self.share.flash_bytes:
                    raise ValueError(f"this generation needs {cold_need} B of cold KV, over the KV namespace's "
                                     f"flash share kv.flash_bytes = {self.share.flash_bytes}")
                reuse = self.share.reuse_prefixes and policy == "full"
                res = run_generate(self.share.model, prompt, n, policy, hot, block_tokens=self.share.block_tokens,
                                   tier=tier, model=model, reuse_prefixes=reuse,
                                   prefix_cap=max(1, self.share.flash_bytes - cold_need))
            except Exception:
                self.counters["errors"] += 1
                raise
            finally:
                self.busy = False
            self.counters["tokens"] += res["new_tokens"]
            self.last = {k: res.get(k) for k in ("policy", "prompt_tokens", "new_tokens", "tokens_per_s", "ttft_s",
                                                  "hot_bytes", "cold_bytes", "prefix_hits")}
            self.last["at"] = time.time()
            return res

    def status(self) -> dict:
        used = prefix = cold = prefixes = None
        if self._tier is not None:  # opened by the first generation
            prefix, cold = self._tier.bytes_used("kvprefix"), self._tier.bytes_used("kv")
            used, prefixes = prefix + cold, len(self._tier.keys("kvprefix.idx"))
        return {**asdict(self.share), "model_note": model_note(self.share.model), "dir": self.root,
                "model_loaded": self._model is not None,
                "flash_used_bytes": used, "flash_prefix_bytes": prefix, "flash_cold_bytes": cold,
                "prefix_chunks": prefixes, "busy": self.busy, **self.counters, "last": self.last}

    def close(self):
        with self._lock:
            if self._tier is not None:
                self._tier.close()
                self._tier = None
