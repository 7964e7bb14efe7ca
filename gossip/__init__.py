"""SWIM-style membership with the Lifeguard extensions, its wire format and encryption.

Owns: who is alive, node metadata, piggybacked dissemination, push-pull anti-entropy.
Imports nothing from overlay/ or underlay/; overlay/ plugs in through `gossip.delegate`.
"""
