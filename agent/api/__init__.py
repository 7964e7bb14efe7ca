"""The control API: routes, HTTP over the unix socket, the error table, the client."""
