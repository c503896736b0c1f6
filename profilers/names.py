"""The energy sources a run may name, in a module that imports nothing (config checks and control
commands read it without loading a meter). ``auto`` picks the first that reads on this machine."""

ENERGY_SOURCES = ("auto", "nvml", "rapl", "jetson", "pi5", "estimate")
