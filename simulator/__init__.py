"""Simulated wearables: devices that stream sets and heart rate into a hub, for demos and load.

`device.Device` is one wearable on one Centrifuge JSON connection; `fleet.Fleet` runs athletes
times devices of them and summarizes what was acknowledged and how fast.
"""

from simulator.device import Device, DeviceReport, ReplyError
from simulator.fleet import Fleet, PhaseResult

__all__ = ["Device", "DeviceReport", "Fleet", "PhaseResult", "ReplyError"]
