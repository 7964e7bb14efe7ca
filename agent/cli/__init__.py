"""The `vxmesh` command."""
