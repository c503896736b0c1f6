"""KV-cache inference path over the RAM + flash tiers (in progress). Built: ``planner`` (exact layer
placement), ``cache`` (the tiered cache: lossless with cold layers in the store, or a lossy policy
within a hot budget), ``policies`` (sink, h2o), ``prefix`` (persistent prefix reuse), ``llama`` (the
built-in decoder), ``generate`` (`miro kv generate`). Not built yet: cascade and topk policies, the
Hugging Face Cache adapter, the daemon's KV share, the benchmark."""
