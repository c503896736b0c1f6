"""KV-cache inference path over the RAM + flash tiers: ``planner`` (exact layer placement),
``cache`` (the tiered cache: lossless with cold layers in the store, or a lossy policy within a hot
budget), ``policies`` (sink, h2o, cascade, topk), ``prefix`` (persistent prefix reuse), ``llama``
(the built-in decoder), ``decoder`` (what generation drives for it), ``dequant`` (a GGUF file to a float32
cache dir), ``bpe`` (its tokenizer), ``pretrained`` (smollm2-135m from its package), ``hf``
(transformers 5.x Cache adapter), ``generate`` (`miro kv generate`),
``service`` (what the daemon serves over its socket). Submodules import torch; this file does not."""
