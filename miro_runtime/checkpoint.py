"""Atomic checkpoints: write a temp file, fsync, rename, fsync the directory. Loaded with
``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, never code."""

from __future__ import annotations

import os

import torch


def save_checkpoint(path: str, state: dict) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
