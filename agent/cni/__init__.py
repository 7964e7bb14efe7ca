"""The CNI front door: the `vxmesh` plugin (standard library only) and its conflists.

`spec` is the protocol, `netconf` the plugin's own configuration and attachment names,
`plugin` the executable's logic, `conflist` the network configurations `vxmesh cni` writes,
`front.c` the compiled executable that hands each run to the agent, `launcher` what builds it
(or the Python script, without a compiler) into CNI bin dirs, `service` the agent's side of
the requests (request validation, whole runs from the front, the answers; no kernel work of
its own).
"""
