"""The tiered KV cache: per-layer keys (before RoPE) and values in fixed-size token blocks. Hot
layers keep theirs as tensors in the compute device's memory; cold layers keep their full blocks in
a store tier below (the RAM blob tier or the LMDB flash tier, in their own namespace) and only the
unfinished tail block in RAM. A cold layer's blocks are fetched when it attends -- layer l+1's on a
background thread while layer l computes (OrbitFlow's overlap) -- so the hot memory holds the hot
layers, one layer in flight and the tails. With no policy the cache is lossless (``full``: attention
over every token, wherever it lives); a lossy policy (``kv/policies``) keeps every layer hot and each
layer within its share of the hot byte budget, choosing which tokens stay.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from .policies.topk import BoundTree
from .sizes import FLOAT32, kv_bytes


class TieredKVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, cold=None, hot_layers=None,
                 block_tokens: int = 16, namespace: str = "kv", model_id: str = "builtin", policy=None,
                 hot_budget: Optional[int] = None, rope=None):
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        stores_all = policy is not None and policy.stores_all
        if policy is not None and (hot_layers is not None or (cold is not None and not stores_all)
                                   or not hot_budget):
            raise ValueError(f"policy {policy.name}: keeps every layer hot within a hot byte budget "
                             "(give hot_budget; cold layers are for the lossless policy)")
        if policy is not None and policy.per_head and not (policy.reposition and policy.per_layer):
            raise ValueError(f"policy {policy.name}: per-head token sets need positions by place in the cache "
                             "(reposition) and per-layer state")
        if stores_all and rope is None:
            raise ValueError(f"policy {policy.name} scores blocks with rotated keys: give the model's rope(x, pos)")
        if stores_all and cold is None:
            from miro_runtime.storage import RamBlobTier
            cold = RamBlobTier()
        self.policy, self.hot_budget, self.rope = policy, hot_budget, rope
        self._stores_all = stores_all  # topk: every block goes to the cold tier
        # a stateful policy (cascade) remembers per layer where each token sits: one copy per layer
        self._policies = ([copy.deepcopy(policy) for _ in range(n_layers)] if policy is not None and policy.per_layer
                          else [policy] * n_layers)
        self._trees, self._hotblk, self._chosen, self._since = {}, {}, {}, {}  # topk, per layer
        self._candidates = {}  # topk, per layer: the blocks [lo, hi) the last step could choose
        self._apos, self._scores = {}, {}  # lossy: per layer, absolute positions and attention received
        self.capacity = None  # lossy: tokens per layer the budget allows
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.block_tokens, self.ns, self.model_id = block_tokens, namespace, model_id
        self.cold = cold
        hot = set(range(n_layers)) if hot_layers is None else set(hot_layers)
        if policy is not None:
            hot = set(range(n_layers))
        if cold is None and hot != set(range(n_layers)):
            raise ValueError("cold layers need a cold tier (a RamBlobTier or a FlashTier)")
        self.hot = hot
        self.seen = 0  # tokens seen (absolute positions 0..seen-1 are cached)
        self._kv = {}  # hot layer -> (K, V) each (B, Hkv, S, hd)
        self._tail = {}  # cold layer -> (K, V) of the unfinished block
        self._blocks = {i: 0 for i in range(n_layers)}  # cold layer -> full blocks in the tier
        self._shape = None  # (B, dtype) fixed at the first update
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kv-prefetch") if cold is not None else None
        self._pending = {}  # cold layer -> (block count, future)
        self._lock = threading.Lock()
        self.stats = {"fetches": 0, "fetched_bytes": 0, "fetch_s": 0.0, "stall_s": 0.0, "written_blocks": 0,
                      "bank_hits": 0, "bank_misses": 0}  # topk: chosen blocks found in the bank, or fetched

    # ------------------------------------------------------------------ keys in the tier
    def key(self, layer: int, block: int) -> str:
        return f"{self.model_id}/L{layer}/B{block}"

    def _encode(self, k, v) -> bytes:  # (B, Hkv, block, hd) each -> raw bytes, keys then values
        return k.contiguous().cpu().numpy().tobytes() + v.contiguous().cpu().numpy().tobytes()

    def _decode(self, buf: bytes, where: str):
        B, dtype = self._shape
        shape = (B, self.n_kv_heads, self.block_tokens, self.head_dim)
        want = kv_bytes(self.block_tokens, self.n_kv_heads, self.head_dim, dtype.itemsize, B)
        if len(buf) != want:
            raise ValueError(f"KV block {where}: {len(buf)} bytes, expected {want}")
        n = int(np.prod(shape))
        t = torch.from_numpy(np.frombuffer(buf, dtype=dtype).copy())
        return t[:n].view(shape), t[n:].view(shape)

    def _fetch(self, layer: int, count: int, room: int = 0):
        """A cold layer's ``count`` full blocks -> (K, V) each (B, Hkv, count * block + room, hd), the
        last ``room`` tokens left for the tail and the new tokens. Read in one transaction, checked, and
        each block copied once, from the tier's buffer straight to its place in the destination (no
        staging buffer: a fresh one costs page faults on every byte, and no cat with the tail afterwards)."""
        t0 = time.perf_counter()
        keys = [self.key(layer, b) for b in range(count)]
        bufs = self.cold.get_many(self.ns, keys, view=True)  # one read transaction on LMDB; checksums verified
        B, dtype = self._shape
        H, bt, hd = self.n_kv_heads, self.block_tokens, self.head_dim
        per = kv_bytes(bt, H, hd, dtype.itemsize, B)
        out = torch.empty(2, B, H, count * bt + room, hd, dtype=getattr(torch, dtype.name))  # (2, B, Hkv, S + room, hd)
        dst = out.numpy()  # the same memory: numpy copies from a read-only buffer without a writable copy
        for i, (key, buf) in enumerate(zip(keys, bufs)):
            if buf is None:
                raise KeyError(f"KV block {self.ns}/{key} is missing from the cold tier")
            if len(buf) != per:
                raise ValueError(f"KV block {self.ns}/{key}: {len(buf)} bytes, expected {per}")
            dst[:, :, :, i * bt:(i + 1) * bt] = np.frombuffer(buf, dtype=dtype).reshape(2, B, H, bt, hd)
        with self._lock:
            self.stats["fetches"] += 1
            self.stats["fetched_bytes"] += per * count
            self.stats["fetch_s"] += time.perf_counter() - t0
        return out[0], out[1]

    # ------------------------------------------------------------------ the model's calls
    def before_layer(self, layer: int) -> None:
        """Layer ``layer`` is about to compute: start fetching the next cold layer's blocks."""
        nxt = layer + 1
        room = self.block_tokens  # a decode step's tail and new token fit beside the fetched blocks
        if nxt < self.n_layers and nxt not in self.hot and self._blocks[nxt] and nxt not in self._pending:
            self._pending[nxt] = (self._blocks[nxt], self._pool.submit(self._fetch, nxt, self._blocks[nxt], room))
        if layer == 0 and 0 not in self.hot and self._blocks[0] and 0 not in self._pending:
            self._pending[0] = (self._blocks[0], self._pool.submit(self._fetch, 0, self._blocks[0], room))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, q: Optional[torch.Tensor] = None):
        """Add T new tokens' keys (before RoPE) and values (B, Hkv, T, hd) -> the (K, V) attention
        should see, each (B, Hkv, S, hd), their RoPE positions and absolute positions (S,). ``q`` (B, H,
        T, hd, before RoPE) is read only by a policy that chooses blocks per query (topk)."""
        B, _, T, _ = k.shape
        if self._shape is None:
            self._shape = (B, np.dtype(str(k.dtype).replace("torch.", "")))
        if self._stores_all:
            if q is None:
                raise ValueError(f"policy {self.policy.name} chooses blocks per query: the model must pass q")
            return self._topk_update(layer, k, v, q)
        if self.policy is not None:
            return self._lossy_update(layer, k, v)
        if layer in self.hot:
            if layer in self._kv:
                K, V = self._kv[layer]
                K, V = torch.cat([K, k], dim=2), torch.cat([V, v], dim=2)
            else:
                K, V = k, v
            self._kv[layer] = (K, V)
        else:
            K, V = self._cold_update(layer, k, v)
        pos = torch.arange(K.shape[2], device=k.device)
        if layer == self.n_layers - 1:
            self.seen += T
        return K, V, pos, pos

    def _lossy_update(self, layer, k, v):
        """Evict down to capacity - T first (the budget holds during the step too), then append. A per-head
        policy keeps each KV head's own tokens: positions and scores are then (Hkv, S), one row a head."""
        B, Hkv, T, hd = k.shape
        if self.capacity is None:
            per_token = kv_bytes(1, self.n_kv_heads, hd, k.element_size(), B)
            self.capacity = self.hot_budget // (self.n_layers * per_token)
        if T > self.capacity:
            raise ValueError(f"a chunk of {T} tokens does not fit the cache's {self.capacity} tokens per layer "
                             f"(hot budget {self.hot_budget} B): prefill in chunks of at most {self.capacity}")
        dev, per_head = k.device, self.policy.per_head
        new_pos = torch.arange(self.seen, self.seen + T, device=dev)
        if per_head:
            new_pos = new_pos.expand(Hkv, T)
        if layer in self._kv:
            K, V = self._kv[layer]
            apos, sc = self._apos[layer], self._scores[layer]
            room = self.capacity - T
            if K.shape[2] > room:
                idx = self._policies[layer].keep(apos.cpu(), sc.cpu(), room).to(dev)
                if per_head:  # idx (Hkv, n): each head gathers its own tokens
                    g = idx[None, :, :, None].expand(B, Hkv, idx.shape[1], hd)
                    K, V, apos, sc = K.gather(2, g), V.gather(2, g), apos.gather(1, idx), sc.gather(1, idx)
                else:
                    K, V, apos, sc = K[:, :, idx], V[:, :, idx], apos[idx], sc[idx]
            K, V = torch.cat([K, k], dim=2), torch.cat([V, v], dim=2)
            apos, sc = torch.cat([apos, new_pos], dim=-1), torch.cat([sc, sc.new_zeros(new_pos.shape)], dim=-1)
        else:
            K, V, apos, sc = k, v, new_pos, torch.zeros(new_pos.shape, device=dev)
        self._kv[layer], self._apos[layer], self._scores[layer] = (K, V), apos, sc
        if layer == self.n_layers - 1:
            self.seen += T
        rope_pos = torch.arange(K.shape[2], device=dev) if self.policy.reposition else apos
        return K, V, rope_pos, apos

    # ------------------------------------------------------------------ topk: every block cold, some chosen
    def _tree(self, layer: int) -> BoundTree:
        if layer not in self._trees:
            self._trees[layer] = BoundTree(self.policy.group, lambda level, j: f"{self.model_id}/L{layer}/R{level}/{j}",
                                           lambda keys: self.cold.get_many(self.ns, keys))
        return self._trees[layer]

    def _topk_update(self, layer, k, v, q):
        pol, bt, dev = self.policy, self.block_tokens, k.device
        B, _, T, hd = k.shape
        count = self._blocks[layer]
        tk, tv = self._tail.get(layer, (k[:, :, :0], v[:, :, :0]))
        nk, nv = torch.cat([tk, k], dim=2), torch.cat([tv, v], dim=2)  # (B, Hkv, tail + T, hd)
        full = nk.shape[2] // bt
        bank = self._hotblk.setdefault(layer, OrderedDict())  # block -> (K, V), least recently used first
        tree = self._tree(layer)
        done = []
        for i in range(full):  # finished blocks: to the cold tier with their bounds, hot while recent
            b = count + i
            bk, bv = nk[:, :, i * bt:(i + 1) * bt], nv[:, :, i * bt:(i + 1) * bt]
            done.append((self.key(layer, b), self._encode(bk, bv)))
            bank[b] = (bk, bv)
            rk = self.rope(bk, torch.arange(b * bt, (b + 1) * bt, device=dev))  # (B, Hkv, bt, hd)
            done += tree.add(torch.stack([rk.amax(dim=2), rk.amin(dim=2)], dim=2))  # (B, Hkv, 2, hd)
        if done:
            self.cold.put_many(self.ns, done)  # the blocks and the bounds they finished: one transaction
        self.stats["written_blocks"] += full
        N = count + full
        self._blocks[layer] = N
        self._tail[layer] = (nk[:, :, full * bt:], nv[:, :, full * bt:])
        sinks = list(range(min(pol.sinks, N)))
        first_recent = max(len(sinks), min(count, N - pol.recent))  # every block this chunk touched is recent
        recent = list(range(first_recent, N))
        self._candidates[layer] = (len(sinks), first_recent)
        # what the budget leaves for the bank, this layer's share, after the bounds kept hot and the rest
        esz = k.element_size()
        block_bytes = kv_bytes(bt, self.n_kv_heads, hd, esz, B)
        share = self.hot_budget // self.n_layers
        tail = kv_bytes(self._tail[layer][0].shape[2], self.n_kv_heads, hd, esz, B)
        fixed = (len(sinks) + len(recent)) * block_bytes + tail + tree.hot_bytes()
        room = (share - fixed) // block_bytes
        if room < 0:
            raise ValueError(f"hot budget {self.hot_budget} B: at {self.seen + T} tokens a layer's sinks, recent "
                             f"blocks and key bounds need {fixed} B, more than its share {share} B; "
                             f"give --hot-budget {fixed * self.n_layers} or more, or fewer sinks or recent blocks")
        k_eff, slots, beam = pol.sized(room)
        since = self._since.get(layer, 0)
        chosen = [b for b in self._chosen.get(layer, []) if first_recent > b >= len(sinks)][:k_eff]
        # a prefill chunk chooses for its queries, decoding every few steps; with no candidate block yet (a
        # prompt shorter than the sinks and recent blocks) there is nothing to choose
        if first_recent > len(sinks) and (T > 1 or since % pol.refresh == 0):
            qpos = torch.arange(self.seen, self.seen + T, device=dev)
            chosen = tree.search(self.rope(q, qpos), len(sinks), first_recent, k_eff, beam)
            since = 0
        self._since[layer] = since + 1
        self._chosen[layer] = chosen
        fixed_ids = set(sinks) | set(recent)
        want = fixed_ids | set(chosen)
        missing = [b for b in chosen if b not in bank]
        self.stats["bank_hits"] += len(chosen) - len(missing)
        self.stats["bank_misses"] += len(missing)
        for b in sorted(want):
            if b in bank:
                bank.move_to_end(b)
        held = [b for b in bank if b not in fixed_ids]  # least recently used first
        for b in held[:max(0, len(held) + len(missing) - slots)]:
            del bank[b]  # out of the bank; the block stays in the cold tier
        if missing:
            t0 = time.perf_counter()
            keys = [self.key(layer, b) for b in missing]
            nbytes = 0
            for b, key, buf in zip(missing, keys, self.cold.get_many(self.ns, keys)):  # only the chosen blocks
                if buf is None:
                    raise KeyError(f"KV block {self.ns}/{key} is missing from the cold tier")
                bank[b] = tuple(x.to(dev) for x in self._decode(buf, f"{self.ns}/{key}"))
                nbytes += len(buf)
            self.stats["fetches"] += 1
            self.stats["fetched_bytes"] += nbytes
            self.stats["stall_s"] += time.perf_counter() - t0
        ids = sorted(want)
        tk, tv = self._tail[layer]
        K = torch.cat([bank[b][0] for b in ids] + [tk], dim=2)  # (B, Hkv, S, hd)
        V = torch.cat([bank[b][1] for b in ids] + [tv], dim=2)
        apos = torch.cat([torch.arange(b * bt, (b + 1) * bt, device=dev) for b in ids]
                         + [torch.arange(N * bt, N * bt + tk.shape[2], device=dev)])
        if layer == self.n_layers - 1:
            self.seen += T
        return K, V, apos, apos

    def bank_blocks(self, layer: int) -> int:
        """topk: blocks the layer's bank holds beside its sink and recent blocks."""
        lo, hi = self._candidates.get(layer, (0, 0))
        return sum(1 for b in self._hotblk.get(layer, {}) if lo <= b < hi)

    def layer_kv(self, layer: int):
        """Every cached token's (K, V) of one layer, wherever they live (lossless cache)."""
        if layer in self.hot:
            return self._kv[layer]
        tk, tv = self._tail[layer]
        K, V = self._fetch(layer, self._blocks[layer], tk.shape[2])
        S = self._blocks[layer] * self.block_tokens
        K[:, :, S:], V[:, :, S:] = tk, tv
        return K, V

    def set_hot(self, hot) -> dict:
        """Move layers between hot and cold (a re-plan): a demoted layer's full blocks go down to the
        cold tier in one transaction and its tail stays in RAM; a promoted layer's blocks come back up
        and leave the tier. Lossless: attention sees the same keys and values either way."""
        hot = set(hot)
        if self.policy is not None or self.cold is None:
            raise ValueError("set_hot moves layers of a lossless cache with a cold tier")
        bt = self.block_tokens
        down, up = sorted(self.hot - hot), sorted(hot - self.hot)
        for layer in down:
            if layer not in self._kv:  # nothing cached yet
                continue
            K, V = self._kv.pop(layer)
            full = K.shape[2] // bt
            if full:
                self.cold.put_many(self.ns, [(self.key(layer, b), self._encode(K[:, :, b * bt:(b + 1) * bt],
                                                                                V[:, :, b * bt:(b + 1) * bt]))
                                             for b in range(full)])
            self.stats["written_blocks"] += full
            self._blocks[layer] = full
            self._tail[layer] = (K[:, :, full * bt:].clone(), V[:, :, full * bt:].clone())
        for layer in up:
            pend = self._pending.pop(layer, None)
            if pend is not None:
                pend[1].result()  # a prefetch in flight: let it finish, its copy is not needed
            if layer in self._tail:
                self._kv[layer] = self.layer_kv(layer)
                self.cold.delete_many(self.ns, [self.key(layer, b) for b in range(self._blocks[layer])])
                del self._tail[layer]
            self._blocks[layer] = 0
        self.hot = hot
        return {"demoted": down, "promoted": up}

    def prefill_spans(self, start: int, end: int) -> list:
        """Prompt tokens [start, end) as the (s, e) chunks to prefill, each of ``capacity_hint`` tokens. A
        policy that chooses blocks per query (topk) gets the prompt's last block of tokens as a chunk of its
        own: the blocks the first generated token reads are then chosen by the question's own queries (HiP
        chooses per query block), not by the best bounds of a few hundred queries before it, which at 2k
        tokens of real text buried the passkey's block (1 of 6 prompts retrieved vs 4 of 6 with its own)."""
        chunk = self.capacity_hint(end - start)
        cut = max(start, end - self.block_tokens) if self._stores_all and end - start > self.block_tokens else end
        spans = [(s, min(s + chunk, cut)) for s in range(start, cut, chunk)]
        return spans + ([(cut, end)] if cut < end else [])

    def capacity_hint(self, n: int) -> int:
        """How many prompt tokens to prefill per chunk: all of them, or what a lossy policy's
        per-layer capacity allows (a chunk must fit beside nothing)."""
        if self.policy is None:
            return n
        if self._stores_all:  # topk: a chunk's blocks beside sinks, recent, tail,
            bt, pol = self.block_tokens, self.policy      # the representatives at n tokens and >= 1 chosen block
            B = self._shape[0] if self._shape else 1
            block_bytes = kv_bytes(bt, self.n_kv_heads, self.head_dim, FLOAT32, B)
            # a bound (a max and a min key per head) is as large as one token's K and V; fewer than ``group``
            # per level of the tree stay hot
            blocks, levels = -(-(self.seen + n) // bt), 1
            while pol.group ** levels < blocks:
                levels += 1
            reps = (pol.group - 1) * levels * kv_bytes(1, self.n_kv_heads, self.head_dim, FLOAT32, B)
            room = (self.hot_budget // self.n_layers - reps) // block_bytes - pol.sinks - pol.recent - 2
            return max(1, min(n, bt * max(1, min((pol.k or room) // 2, room))))
        per_token = kv_bytes(1, self.n_kv_heads, self.head_dim, FLOAT32, self._shape[0] if self._shape else 1)
        cap = self.capacity or self.hot_budget // (self.n_layers * per_token)
        if cap < 1:
            raise ValueError(f"hot budget {self.hot_budget} B holds no token of {self.n_layers} layers")
        return max(1, min(n, cap // 2))

    @property
    def needs_scores(self) -> bool:
        return self.policy is not None and self.policy.needs_scores

    def observe(self, layer: int, probs: torch.Tensor) -> None:
        """Attention the cached tokens just received: probs (B, H, T, S), summed over queries, reduced
        over heads and the batch as the policy says (``received``)."""
        pol = self._policies[layer]
        B, H, _, S = probs.shape
        got = pol.received(probs.sum(dim=2).view(B, self.n_kv_heads, H // self.n_kv_heads, S))  # (S,) or (Hkv, S)
        old = self._scores[layer]
        self._scores[layer] = pol.accumulate(old, got)

    def _cold_update(self, layer, k, v):
        count, bt, dev = self._blocks[layer], self.block_tokens, k.device
        tk, tv = self._tail.get(layer, (k[:, :, :0], v[:, :, :0]))
        nk, nv = torch.cat([tk, k], dim=2), torch.cat([tv, v], dim=2)  # (B, Hkv, tail + T, hd)
        n = nk.shape[2]
        K = V = None
        if count:
            pend = self._pending.pop(layer, None)
            t0 = time.perf_counter()
            if pend is not None and pend[0] == count:
                K, V = pend[1].result()  # waits only if the prefetch has not finished
            else:
                K, V = self._fetch(layer, count, n)
            self.stats["stall_s"] += time.perf_counter() - t0
        full = n // bt
        if full:  # newly completed blocks go down to the cold tier, one transaction
            self.cold.put_many(self.ns, [(self.key(layer, count + i), self._encode(nk[:, :, i * bt:(i + 1) * bt],
                                                                                  nv[:, :, i * bt:(i + 1) * bt]))
                                         for i in range(full)])
        self.stats["written_blocks"] += full
        self._blocks[layer] = count + full
        self._tail[layer] = (nk[:, :, full * bt:], nv[:, :, full * bt:])
        if K is None:
            return nk, nv
        S = count * bt
        if K.shape[2] - S < n:  # a prefill chunk larger than the room the prefetch left
            return torch.cat([K[:, :, :S].to(dev), nk], dim=2), torch.cat([V[:, :, :S].to(dev), nv], dim=2)
        K, V = K.to(dev), V.to(dev)
        K[:, :, S:S + n], V[:, :, S:S + n] = nk, nv  # into the room left beside the fetched blocks
        return K[:, :, :S + n], V[:, :, :S + n]

    # ------------------------------------------------------------------ reporting
    def hot_bytes(self) -> int:
        """Bytes held in the compute device's memory: hot layers and cold layers' tails."""
        n = sum(K.numel() * K.element_size() + V.numel() * V.element_size() for K, V in self._kv.values())
        n += sum(K.numel() * K.element_size() * 2 for K, _ in self._tail.values())
        n += sum(t.hot_bytes() for t in self._trees.values())
        return n + sum(K.numel() * K.element_size() * 2 for blocks in self._hotblk.values() for K, _ in blocks.values())

    def cold_bytes(self) -> int:
        if not self._shape:
            return 0
        per = kv_bytes(self.block_tokens, self.n_kv_heads, self.head_dim, self._shape[1].itemsize, self._shape[0])
        cold = [i for i in range(self.n_layers) if i not in self.hot or self._stores_all]
        return per * sum(self._blocks[i] for i in cold)

    def close(self, drop_blocks: bool = False):
        """Stop the prefetch thread; ``drop_blocks``: delete this cache's blocks from the cold tier
        (a long-lived tier, such as the daemon's, keeps only what the prefix store chose to keep)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if drop_blocks and self.cold is not None:
            keys = [self.key(layer, b) for layer, n in self._blocks.items() for b in range(n)]
            keys += [key for t in self._trees.values() for key in t.keys()]  # topk's key bounds
            self.cold.delete_many(self.ns, keys)
            self._blocks = {i: 0 for i in range(self.n_layers)}
