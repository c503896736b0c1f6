"""Joint training: every task trains on all samples stored so far (read back from the flash
tier). The upper bound; its cost grows with the stream."""

import numpy as np
import torch
import torch.nn.functional as F

from .base import Strategy


class Joint(Strategy):
    name = "joint"

    def _stored(self, t):
        ids = np.concatenate([self.flash.class_ids(self.ns, c) for c in self.stream.classes_upto(t)])
        ids.sort()
        b = self.flash.read_batch(self.ns, ids)
        return torch.from_numpy(b["x"]), torch.from_numpy(b["labels"]), ids

    def training_data(self, t, x, y, ids):
        return self._stored(t)

    def observe(self, x, y):
        if not self.cfg.online or self.task == 0:
            return super().observe(x, y)
        # online: replay a batch drawn from everything stored (an unbounded memory on flash)
        past = np.concatenate([self.flash.class_ids(self.ns, c) for c in self.stream.classes_upto(self.task - 1)])
        if past.size:
            pick = past[self.rng.integers(0, past.size, self.cfg.batch_size)]
            b = self.flash.read_batch(self.ns, pick)
            x, y = torch.cat([x, torch.from_numpy(b["x"])]), torch.cat([y, torch.from_numpy(b["labels"])])
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        return self.step(F.cross_entropy(self.model(x.to(self.device)), y.to(self.device)))
