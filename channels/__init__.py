"""FitSync's channel kinds: one module per namespace with its rules and side effects.

Nothing here touches a socket: rules receive a `Principal` and payload bytes from the hub and
answer with a decision, an enriched payload, or a `ReplyError`.
"""
