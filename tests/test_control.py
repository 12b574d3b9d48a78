"""Control messages between nodes: what one node encodes, every node decodes the same."""

from __future__ import annotations

import pytest

from hub import control
from hub.protocol.codes import DisconnectCode


@pytest.mark.parametrize("command", [
    control.DisconnectUser("ann", DisconnectCode.FORCE_NO_RECONNECT),
    control.RecheckUser("kim"),
    control.ApplicationMessage({"coach_cancelled": "r-1", "nested": {"n": [1, 2]}}),
])
def test_each_command_comes_back_as_it_was_sent(command: control.Command) -> None:
    assert control.decode(control.encode(command)) == command


@pytest.mark.parametrize("data", [
    b"not json", b'{"op": "recheck"}', b'{"op": "app", "message": [1]}', b'{"op": "app"}',
    b'{"op": "teleport", "user": "ann"}', b'{"op": "recheck", "user": 7}',
])
def test_what_no_node_could_have_sent_is_malformed(data: bytes) -> None:
    with pytest.raises(control.MalformedControl):
        control.decode(data)
