"""DER++ (Buzzega et al. 2020): the memory stores each sample's logits beside it; replay adds
alpha * MSE(logits now, logits stored) on one memory batch and beta * CE on another.

Logits are stored padded to the stream's class count; only the classes the head had when a
sample's logits were taken count in the MSE (the head grows between tasks)."""

import torch
import torch.nn.functional as F

from .base import Strategy


class DER(Strategy):
    name = "der"
    uses_memory = True

    @property
    def aux_dim(self):
        # a live stream does not know its class count: logits are padded to its cap (max_classes)
        return self.stream.max_classes

    def aux_for(self, x, t):
        self.model.eval()
        with torch.no_grad():
            out = self.model(x.to(self.device)).float().cpu()  # (N, K_now)
        pad = torch.zeros((len(x), self.aux_dim))
        pad[:, : out.shape[1]] = out
        return pad

    def observe(self, x, y):
        self.model.train()
        b, r = len(y), self.cfg.batch_size
        if not len(self.memory):
            return super().observe(x, y)
        s1, m1 = self.memory.sample(r)
        s2, m2 = self.memory.sample(r)
        n1 = len(s1)
        self.opt.zero_grad(set_to_none=True)
        out = self.model(torch.cat([x, m1["x"], m2["x"]]).to(self.device))  # (B + 2R, K)
        k = out.shape[1]
        loss = self.incoming_loss(out[:b], y.to(self.device))  # --ace: among the batch's classes
        o1 = out[b:b + n1]
        # a stored logit counts only if its class existed in the head when it was stored
        n_at = torch.tensor([len(self.stream.classes_upto(int(t))) for t in m1["task"]], device=self.device)
        mask = (torch.arange(k, device=self.device)[None] < n_at[:, None]).float()  # (R, K)
        target = m1["aux"][:, :k].to(self.device)
        loss = loss + self.cfg.der_alpha * (((o1 - target) ** 2) * mask).sum() / mask.sum().clamp(min=1)
        loss = loss + self.cfg.der_beta * F.cross_entropy(out[b + n1:], m2["y"].to(self.device))
        value = self.step(loss)
        self.last_replay = (s1, o1.detach(), m1["y"], m1["versions"])
        return value
