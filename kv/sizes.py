"""How many bytes keys and values take, defined once: the tiered cache, the planner's layer costs,
the daemon's KV share checks and the benchmarks all size KV with ``kv_bytes``. Standard library only."""

FLOAT32 = 4  # bytes per element: the built-in decoder and the planner's estimates use float32


def kv_bytes(tokens: int, kv_heads: int, head_dim: int, itemsize: int = FLOAT32, batch: int = 1) -> int:
    """Bytes of one layer's K and V for ``tokens`` positions of ``batch`` sequences:
    2 (K and V) x batch x kv_heads x tokens x head_dim x itemsize."""
    return 2 * batch * kv_heads * tokens * head_dim * itemsize
