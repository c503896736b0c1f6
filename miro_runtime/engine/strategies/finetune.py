"""Fine-tuning: train on each task's samples only. The lower bound (catastrophic forgetting)."""

from .base import Strategy


class Finetune(Strategy):
    name = "finetune"
