"""The composition root: config, etcd store, IPAM, pipeline, control API, CLI, metrics, lab."""
