"""`vxmesh lab`: namespace hosts, a local etcd, provisioning."""
