"""The agent process: composition root, pipeline, gossip link, metrics, systemd."""
