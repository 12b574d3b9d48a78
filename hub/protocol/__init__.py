"""The wire: Centrifuge client protocol v2 vocabulary and its three encodings, all pure code."""
