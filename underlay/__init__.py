"""The host side: underlay facts, the kernel adapter (the only user of pyroute2) and local
endpoint modes (none, host, bridge, macvlan, ipvlan).

Imports nothing from gossip/, overlay/ or agent/.
"""
