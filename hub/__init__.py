"""FitSync Hub: a Centrifuge-protocol realtime server core that knows nothing about fitness."""

__version__ = "0.1.0"
