"""KV-cache inference path over the RAM + flash tiers (not built yet; a later issue)."""
