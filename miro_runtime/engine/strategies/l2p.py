"""L2P (Wang et al., CVPR'22): learning to prompt a frozen ViT from a pool of key-matched prompts."""

from dataclasses import dataclass

from .prompt import PromptOptions, PromptStrategy


@dataclass
class L2POptions(PromptOptions):
    pool_size: int = 10
    length: int = 5  # tokens per prompt
    top_k: int = 5  # prompts chosen per sample

    def check(self) -> list:
        p = super().check()
        if self.pool_size < 1 or self.length < 1:
            p.append(f"pool_size={self.pool_size}, length={self.length}: must be >= 1")
        if not 1 <= self.top_k <= self.pool_size:
            p.append(f"top_k={self.top_k}: must lie in 1..pool_size ({self.pool_size})")
        return p


class L2P(PromptStrategy):
    name = "l2p"
    method = "l2p"
    Options = L2POptions
