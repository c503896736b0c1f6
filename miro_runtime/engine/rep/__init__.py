"""REP's mechanisms (Jeon et al.) as small pure parts: ``atom`` (token merging and its schedule),
``ald`` (layer keep probabilities), ``swift`` (the small query network), ``vit`` (a frozen
torchvision ViT run block by block), ``prompts`` (L2P pool, DualPrompt prefixes), ``model`` (the
prompted ViT), ``pretrain`` (a small backbone for devices with no pretrained weights)."""
