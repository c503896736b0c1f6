"""Latent replay (Pellegrini et al., "Latent Replay for Real-Time Continual Learning", IROS 2020): samples
pass the frozen part of a pretrained backbone once; their activations there (latents) are what the flash
tier stores and the RAM memory replays, so a training step runs only the layers above.

The pieces, each used by the learner in latent mode: ``LatentCodec`` (frozen part -> float16 latents, and
the fingerprint a store of latents is tied to), ``OnLatents`` (what the strategy trains and checkpoints:
the trained top and the head), ``Composed`` (raw images -> logits through both, for ``predict``),
``LatentView`` (the stream as the strategy sees it: the latent shape, test sets encoded once) and
``TaskLatents`` (the open task's latents); ``LatentMode`` is what the learner holds of them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from miro_runtime.storage import NsBatch, SampleSpec

from .checkpoint import CheckpointError

NS_RAW, NS_LATENT = "samples", "latents"  # flash namespaces: raw images, their latents
LATENT_DTYPE = "float16"  # half the bytes of float32; the frozen blocks' outputs are bounded by BN + ReLU6
FINGERPRINT_KEY = "latent/fingerprint"  # flash meta: which frozen part made the stored latents


def replay_ns(cfg) -> str:
    """The flash namespace a strategy replays from: latents in latent mode, raw samples otherwise."""
    return NS_LATENT if cfg.latent_replay else NS_RAW


class LatentCodec:
    """The frozen part as an encoder: uint8 images (N, C, H, W) -> float16 latents (N, *latent_shape)."""

    def __init__(self, frozen: nn.Module, sample_shape, source: str, device="cpu", batch: int = 256):
        self.frozen, self.device, self.batch = frozen.to(device).eval(), torch.device(device), batch
        with torch.no_grad():
            probe = self.frozen(torch.zeros((1, *sample_shape), dtype=torch.uint8, device=self.device))
        self.latent_shape = tuple(int(s) for s in probe.shape[1:])
        self.fingerprint = (f"{type(frozen).__name__} blocks={getattr(frozen, 'n_blocks', '?')} "
                            f"size={getattr(frozen, 'size', '?')} weights={source[:16]}")
        self.encoded = 0  # samples encoded so far (each costs one frozen forward)

    @property
    def record_bytes(self) -> int:
        return int(np.prod(self.latent_shape)) * np.dtype(LATENT_DTYPE).itemsize

    @torch.no_grad()
    def encode(self, x) -> torch.Tensor:
        """uint8 images (N, C, H, W), array or tensor -> float16 latents on the CPU (N, *latent_shape)."""
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        out = torch.empty((len(x), *self.latent_shape), dtype=torch.float16)
        for i in range(0, len(x), self.batch):
            out[i:i + self.batch] = self.frozen(x[i:i + self.batch].to(self.device)).to("cpu", torch.float16)
        self.encoded += len(x)
        return out


class OnLatents(nn.Module):
    """The trained part on latents: top -> head. What a strategy trains and a checkpoint keeps (the frozen
    weights come from their package, not from checkpoints)."""

    def __init__(self, top: nn.Module, head: nn.Module):
        super().__init__()
        self.top, self.head = top, head

    def forward(self, z):  # (B, *latent_shape) float16 -> (B, K)
        return self.head(self.top(z.float()))


class Composed(nn.Module):
    """Raw images -> logits: the codec, then the trained part, through the same float16 latents training
    saw (so a prediction equals the trained part's output on the stored latent)."""

    def __init__(self, codec: LatentCodec, on_latents: OnLatents):
        super().__init__()
        self.codec, self.on_latents = codec, on_latents

    @property
    def head(self):
        return self.on_latents.head

    def forward(self, x):  # (B, C, H, W) uint8 -> (B, K)
        return self.on_latents(self.codec.encode(x).to(next(self.on_latents.parameters()).device))


class _EncodedTests:
    """``stream.test[j]`` as (latents, labels), each task's set encoded once on first use (evaluation runs
    after every task; the frozen part would otherwise run on every test set again and again)."""

    def __init__(self, stream, codec: LatentCodec):
        self.stream, self.codec = stream, codec
        self._memo: dict = {}

    def __len__(self):
        return len(self.stream.test)

    def __getitem__(self, j: int):
        x, y = self.stream.test[j]
        hit = self._memo.get(j)
        if hit is None or len(hit[1]) != len(y):  # a live stream's test set grows
            hit = self._memo[j] = (self.codec.encode(x).numpy(), y)
        return hit


class LatentView:
    """The stream as a strategy sees it in latent mode: tasks and classes as the stream's, samples of
    the latent shape, test sets as latents. Everything else is the stream's own."""

    def __init__(self, stream, codec: LatentCodec):
        self._stream, self.codec = stream, codec
        self.shape = codec.latent_shape
        self.test = _EncodedTests(stream, codec)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class TaskLatents:
    """The open task's latents by sample id, kept in RAM from the moment its batches are stored (the flash
    tier is budgeted: a task's own latents may be evicted before its epochs run). After a restart they
    come back from flash by id; ids found in neither are encoded again from the raw samples."""

    def __init__(self):
        self.task: Optional[int] = None
        self._ids: list = []
        self._z: list = []

    def add(self, t: int, ids, z: torch.Tensor) -> None:
        if t != self.task:
            self.clear()
            self.task = t
        self._ids.append(np.asarray(ids, dtype=np.int64))
        self._z.append(z)

    def clear(self) -> None:
        self.task, self._ids, self._z = None, [], []

    def get(self, t: int, ids, x, codec: LatentCodec, flash, ns: str) -> torch.Tensor:
        """Latents of task t's samples ``ids`` (rows of raw ``x``), in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        out = torch.empty((len(ids), *codec.latent_shape), dtype=torch.float16)
        have = np.zeros(len(ids), dtype=bool)
        if self.task == t and self._ids:
            held = np.concatenate(self._ids)
            order = np.argsort(held)
            pos = np.searchsorted(held[order], ids)
            pos = np.minimum(pos, len(held) - 1)
            hit = held[order][pos] == ids
            if hit.any():
                out[torch.from_numpy(np.nonzero(hit)[0])] = torch.cat(self._z)[torch.from_numpy(order[pos[hit]])]
                have |= hit
        if not have.all():
            miss = np.nonzero(~have)[0]
            b = flash.read_batch(ns, ids[miss])
            found = b["found"]
            if found.any():
                out[torch.from_numpy(miss[found])] = torch.from_numpy(b["x"][found])
                have[miss[found]] = True
        if not have.all():
            miss = np.nonzero(~have)[0]
            out[torch.from_numpy(miss)] = codec.encode(np.asarray(x)[miss])
        if self.task != t or len(ids) >= sum(len(i) for i in self._ids):  # the whole task: one array from now on
            self.clear()
            self.add(t, ids, out)
        return out


class LatentMode:
    """Latent replay inside a learner: the backbone split into codec and trained part, the stream the
    strategy sees, and the store's two namespaces kept in step (``NS_RAW`` beside ``NS_LATENT``, unless
    ``drop_raw``)."""

    def __init__(self, model: nn.Module, stream, device):
        self.codec = LatentCodec(model.frozen, stream.shape, model.source, device)
        self.model = OnLatents(model.top, model.head)
        self.view = LatentView(stream, self.codec)
        self.task = TaskLatents()

    def declare(self, flash, cfg, num_classes: int) -> None:
        """The latents' namespace, tied to the frozen part that made them: a store of latents from other
        weights, another frozen depth or input size is refused (replaying them would train the top on
        features it will never see again)."""
        fp = self.codec.fingerprint
        flash.declare_samples(NS_LATENT, SampleSpec(shape=self.codec.latent_shape, dtype=LATENT_DTYPE,
                                                    num_classes=num_classes, policy=cfg.flash_policy,
                                                    budget_records=cfg.flash_budget))
        stored = flash.get_meta(FINGERPRINT_KEY)
        if stored is None:
            flash.set_meta(FINGERPRINT_KEY, fp)
        elif stored != fp:
            raise CheckpointError(f"{cfg.run_dir}/state holds latents made by [{stored}], but this configuration "
                                  f"makes them with [{fp}]: resume with the frozen part the run began with, or start "
                                  f"a new run")

    def store(self, flash, t: int, x, y, meta: Optional[dict], drop_raw: bool):
        """Encode once; the latents (and the raw samples) in one transaction -> the latents' PutResult."""
        z = self.codec.encode(x)  # (N, *latent_shape) float16
        tasks = np.full(len(y), t)
        parts = [NsBatch(NS_LATENT, list(z.numpy()), y, tasks)]
        if not drop_raw:
            parts.append(NsBatch(NS_RAW, list(x), y, tasks))
        res = flash.put_batches(parts, meta=meta)
        if len(res) > 1 and not np.array_equal(res[0].ids, res[1].ids):
            raise RuntimeError(f"flash namespaces {NS_LATENT!r} and {NS_RAW!r} gave one batch different ids "
                               f"({res[0].ids[0]} vs {res[1].ids[0]}): the store was written outside this learner")
        self.task.add(t, res[0].ids, z)
        return res[0]

    def inputs(self, t: int, x, ids, flash) -> torch.Tensor:
        """Task t's samples ``ids`` (rows of raw ``x``) as latents."""
        return self.task.get(t, ids, x, self.codec, flash, NS_LATENT)
