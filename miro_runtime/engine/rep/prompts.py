"""The two prompt mechanisms REP builds on, as parameter holders with a ``select(query)`` each.

L2P (Wang et al.): a pool of prompts, each with a learnable key; the top-k keys by cosine similarity
to the query pick the prompts prepended to the tokens; the matching loss pulls the chosen keys
towards their queries. DualPrompt (Wang et al.): general prompts shared by all tasks in the early
layers and one expert prompt per task in later layers, both as prefixes of the attention's keys and
values (prefix tuning); the task's key is trained to match its queries and picks the expert at test
time.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class L2PPool(nn.Module):
    def __init__(self, dim: int, pool_size: int = 10, length: int = 5, top_k: int = 5):
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"l2p: top_k {top_k} must lie in 1..pool_size {pool_size}")
        self.top_k = top_k
        self.prompts = nn.Parameter(torch.empty(pool_size, length, dim).uniform_(-1, 1))  # (M, Lp, D)
        self.keys = nn.Parameter(torch.empty(pool_size, dim).uniform_(-1, 1))  # (M, D)

    def select(self, query: torch.Tensor):
        """query (B, D) -> (prompt tokens (B, k*Lp, D), matching loss, chosen indices (B, k))."""
        sim = F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).t()  # (B, M)
        idx = sim.topk(self.top_k, dim=1).indices  # (B, k)
        chosen = self.prompts[idx]  # (B, k, Lp, D)
        loss = (1.0 - sim.gather(1, idx)).sum(dim=1).mean()  # pull the chosen keys to their queries
        return chosen.flatten(1, 2), loss, idx


class DualPromptSet(nn.Module):
    def __init__(self, dim: int, heads: int, num_layers: int, g_layers=(0, 1), g_length: int = 5,
                 e_layers=(2, 3, 4), e_length: int = 10):
        super().__init__()
        for name, layers in (("g_layers", g_layers), ("e_layers", e_layers)):
            bad = [i for i in layers if not 0 <= i < num_layers]
            if bad:
                raise ValueError(f"dualprompt: {name} {list(layers)} name layers outside 0..{num_layers - 1}")
        self.dim, self.heads = dim, heads
        self.g_layers, self.e_layers = tuple(g_layers), tuple(e_layers)
        self.e_length = e_length
        # prefixes: (layers, 2 [key, value], length, D)
        self.g = nn.Parameter(torch.empty(len(g_layers), 2, g_length, dim).uniform_(-1, 1))
        self.e = nn.ParameterList()  # one (layers, 2, length, D) per task, grown at task starts
        self.e_keys = nn.ParameterList()  # one (D,) per task

    @property
    def num_tasks(self) -> int:
        return len(self.e)

    def grow(self, tasks: int, generator=None) -> bool:
        grew = False
        while len(self.e) < tasks:
            dev = self.g.device
            self.e.append(nn.Parameter(torch.empty(len(self.e_layers), 2, self.e_length, self.dim, device=dev)
                                       .uniform_(-1, 1, generator=generator)))
            self.e_keys.append(nn.Parameter(torch.empty(self.dim, device=dev).uniform_(-1, 1, generator=generator)))
            grew = True
        return grew

    def select(self, query: torch.Tensor, task=None):
        """query (B, D); ``task`` (training) the true task, else the best-matching key's.
        -> ({layer: (pk, pv) each (B, H, P, dh)}, matching loss, chosen task (B,))."""
        B = query.shape[0]
        keys = torch.stack(list(self.e_keys))  # (T, D)
        sim = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()  # (B, T)
        if task is None:
            idx = sim.argmax(dim=1)  # (B,)
            loss = sim.new_zeros(())
        else:
            idx = torch.full((B,), int(task), dtype=torch.long, device=query.device)
            loss = (1.0 - sim[:, int(task)]).mean()
        H, dh = self.heads, self.dim // self.heads
        out = {}
        for i, layer in enumerate(self.g_layers):
            p = self.g[i].view(2, -1, H, dh).transpose(1, 2)  # (2, H, Lg, dh)
            out[layer] = (p[0].expand(B, -1, -1, -1), p[1].expand(B, -1, -1, -1))
        e = torch.stack(list(self.e))[idx]  # (B, layers, 2, Le, D)
        for i, layer in enumerate(self.e_layers):
            p = e[:, i].reshape(B, 2, -1, H, dh).transpose(2, 3)  # (B, 2, H, Le, dh)
            if layer in out:  # a layer with both: the general prefix first
                out[layer] = (torch.cat([out[layer][0], p[:, 0]], dim=2), torch.cat([out[layer][1], p[:, 1]], dim=2))
            else:
                out[layer] = (p[:, 0], p[:, 1])
        return out, loss, idx
