"""The CNI front door: the `vxmesh` plugin (standard library only) and its conflists.

`spec` is the protocol, `netconf` the plugin's own configuration and attachment names,
`plugin` the executable's logic, `conflist` the network configurations `vxmesh cni` writes,
`launcher` the tiny script installed into CNI bin dirs, `attach` the agent's side of the
requests (request validation and the answers, no kernel work of its own).
"""
