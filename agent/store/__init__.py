"""The etcd store: client, key schema, IPAM, address pools, network view."""
