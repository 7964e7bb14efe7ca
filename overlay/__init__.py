"""VXLAN overlay networks: the replicated neighbor table, desired state and the reconciler.

May import gossip/ and underlay/; never agent/.
"""
