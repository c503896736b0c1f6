"""Experience replay (ER): each step trains on the incoming batch plus an equal-sized batch drawn
from the RAM episodic memory (class-balanced or reservoir). ``--ace``: ER-ACE's asymmetric loss
(Caccia et al. 2022)."""

import torch
import torch.nn.functional as F

from .base import Strategy


class ER(Strategy):
    name = "er"
    uses_memory = True

    def observe(self, x, y):
        self.model.train()
        b = len(y)
        slots, mem = self.memory.sample(self.cfg.batch_size) if len(self.memory) else (None, None)
        if mem is not None:
            x, y = torch.cat([x, mem["x"]]), torch.cat([y, mem["y"]])  # (B + R, C, H, W)
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x.to(self.device))  # (B + R, K)
        y = y.to(self.device)
        if self.cfg.ace:  # ER-ACE: the incoming samples among their own classes, the replayed among all
            loss = self.incoming_loss(out[:b], y[:b])
            if mem is not None:
                loss = loss + F.cross_entropy(out[b:], y[b:])
        else:
            loss = F.cross_entropy(out, y)
        value = self.step(loss)
        self.last_replay = None if mem is None else (slots, out[b:].detach(), mem["y"], mem["versions"])
        return value
