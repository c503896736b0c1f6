"""Every allowed value of the runtime's settings, defined once. Configuration checks, the daemon's
TOML, `miro run`'s options and their help all read these tuples; the modules that implement a name
check against them. Standard library only (control commands import it without torch or numpy):
the lower layers' own names come from their stdlib-only ``names`` modules."""

from miro_runtime.kv.names import POLICIES as KV_POLICIES
from miro_runtime.profilers.names import ENERGY_SOURCES
from miro_runtime.storage.names import EVICTION_POLICIES, SYNC_MODES as _SYNC

STREAMS = ("split-digits", "split-fashion-mnist", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder",
           "synthetic")
STRATEGIES = ("finetune", "joint", "er", "der", "carm", "carm-sync", "l2p", "dualprompt", "rep-l2p", "rep-dualprompt")
PROMPT_STRATEGIES = ("l2p", "dualprompt", "rep-l2p", "rep-dualprompt")  # a frozen ViT from --backbone
REPLAY = ("er", "der")  # the method CarM runs on top of
MODELS = ("auto", "cnn", "resnet18", "efficientnet-lite0")
SYNC_MODES = tuple(_SYNC)
MIRO_RULES = ("top-half-acc-per-joule", "acc-per-joule", "lowest-energy", "highest-accuracy", "zeus")
MIRO_SEARCH = ("bandit", "grid")
LOG_LEVELS = ("debug", "info", "warning", "error")

# setting -> its allowed values, by RunConfig field (the daemon's [learning] table uses the same names)
RUN_CHOICES = {
    "stream": STREAMS, "strategy": STRATEGIES, "replay": REPLAY, "flash_policy": EVICTION_POLICIES,
    "em_policy": EVICTION_POLICIES, "model": MODELS, "sync_mode": SYNC_MODES, "energy_source": ENERGY_SOURCES,
    "miro_rule": MIRO_RULES, "miro_search": MIRO_SEARCH,
}

__all__ = ["STREAMS", "STRATEGIES", "PROMPT_STRATEGIES", "REPLAY", "MODELS", "EVICTION_POLICIES", "SYNC_MODES",
           "ENERGY_SOURCES", "MIRO_RULES", "MIRO_SEARCH", "LOG_LEVELS", "KV_POLICIES", "RUN_CHOICES"]
