"""Brokers carry publications, history and presence between the nodes of a hub."""
