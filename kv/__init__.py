"""KV-cache inference path over the RAM + flash tiers (in progress: ``planner`` places layers hot or
cold, ``cache`` holds the lossless tiered cache, ``llama`` the built-in decoder that uses it; the
lossy policies, persistent prefix reuse, the Hugging Face adapter and `miro kv` are not built yet)."""
