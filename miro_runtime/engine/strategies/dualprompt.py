"""DualPrompt (Wang et al., ECCV'22): general prompts in early layers, one expert prompt per task in
later layers, both as attention prefixes on a frozen ViT."""

from dataclasses import dataclass

from .prompt import PromptOptions, PromptStrategy


@dataclass
class DualPromptOptions(PromptOptions):
    g_layers: tuple = (0, 1)  # layers with the general (shared) prefixes
    g_length: int = 5
    e_layers: tuple = (2, 3, 4)  # layers with the task-expert prefixes
    e_length: int = 10

    def check(self) -> list:
        p = super().check()
        if self.g_length < 1 or self.e_length < 1:
            p.append(f"g_length={self.g_length}, e_length={self.e_length}: must be >= 1")
        if not self.e_layers:
            p.append("e_layers: at least one layer carries the expert prompts")
        return p


class DualPrompt(PromptStrategy):
    name = "dualprompt"
    method = "dualprompt"
    Options = DualPromptOptions
