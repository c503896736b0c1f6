"""The KV policies a request may name, in a module that imports nothing (the daemon's config checks
and control commands read it without torch). ``kv/policies`` implements each lossy one."""

POLICIES = ("full", "sink", "h2o", "cascade", "topk")
