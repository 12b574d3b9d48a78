"""The protobuf codec against centrifuge-python: its schema, the commands it sends, the replies
it reads. The SDK parses with `MessageToDict`, so what it sees here is what the app sees."""

from __future__ import annotations

from typing import Any

import centrifuge.protocol.client_pb2 as sdk_pb2
import pytest
from centrifuge import Client, Filter
from centrifuge.client import _ServerSubscription
from centrifuge.codecs import _ProtobufCodec
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor_pb2 import DescriptorProto

from hub.protocol import client_pb2
from hub.protocol.codec import put_uvarint, split_uvarint_stream
from hub.protocol.codes import ProtocolError
from hub.protocol.protobuf_codec import ProtobufCodec, message_to_dict

codec = ProtobufCodec()
sdk = _ProtobufCodec()


# --- schema drift ----------------------------------------------------------------------------


def _as_proto(descriptor: Descriptor) -> DescriptorProto:
    proto = DescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _fields(proto: DescriptorProto, package: str) -> dict[int, tuple[str, int, int, str]]:
    """Field number -> (name, type, label, message type without the package)."""
    return {
        field.number: (field.name, field.type, field.label, field.type_name.removeprefix(package))
        for field in proto.field
    }


def _reserved(proto: DescriptorProto) -> set[int]:
    return {number for r in proto.reserved_range for number in range(r.start, r.end)}


def _assert_compatible(ours: DescriptorProto, theirs: DescriptorProto, path: str) -> None:
    """Every field the SDK knows is ours unchanged; our extra fields (upstream is newer than
    the SDK's copy) only take numbers the SDK neither uses nor reserves."""
    our_fields = _fields(ours, f".{client_pb2.DESCRIPTOR.package}.")
    their_fields = _fields(theirs, f".{sdk_pb2.DESCRIPTOR.package}.")
    for number, field in their_fields.items():
        assert our_fields.get(number) == field, f"{path} field {number}"
    for number in our_fields.keys() - their_fields.keys():
        assert number not in _reserved(theirs), f"{path} reuses reserved {number}"
    assert _reserved(theirs) <= _reserved(ours), path
    our_nested = {nested.name: nested for nested in ours.nested_type}
    for nested in theirs.nested_type:
        assert nested.name in our_nested, f"{path}.{nested.name}"
        _assert_compatible(our_nested[nested.name], nested, f"{path}.{nested.name}")


def test_separate_package_lets_both_schemas_load_in_one_process() -> None:
    assert client_pb2.DESCRIPTOR.package != sdk_pb2.DESCRIPTOR.package
    assert client_pb2.DESCRIPTOR.name != sdk_pb2.DESCRIPTOR.name


@pytest.mark.parametrize("name", sorted(sdk_pb2.DESCRIPTOR.message_types_by_name))
def test_schema_matches_the_sdk(name: str) -> None:
    ours = client_pb2.DESCRIPTOR.message_types_by_name.get(name)
    assert ours is not None, f"message {name} missing"
    _assert_compatible(
        _as_proto(ours), _as_proto(sdk_pb2.DESCRIPTOR.message_types_by_name[name]), name
    )


# --- commands the SDK sends --------------------------------------------------------------------


def _sdk_client(**options: Any) -> Client:
    return Client("ws://localhost/connection/websocket", use_protobuf=True, **options)


def _decode_sdk(*commands: dict[str, Any]) -> list[dict[str, Any]]:
    return codec.decode(sdk.encode_commands(commands))


def test_connect_command() -> None:
    client = _sdk_client(token="tok", data=b'{"plan":"pro"}', name="py", version="1.2")
    client._server_subs["user:1"] = _ServerSubscription(offset=4, epoch="e1", recoverable=True)
    assert _decode_sdk(client._construct_connect_command(1)) == [
        {
            "id": 1,
            "connect": {
                "token": "tok",
                "data": b'{"plan":"pro"}',
                "name": "py",
                "version": "1.2",
                "subs": {"user:1": {"recover": True, "offset": 4, "epoch": "e1"}},
            },
        }
    ]


def test_bare_connect_keeps_the_method_key() -> None:
    client = _sdk_client(name="")
    assert _decode_sdk(client._construct_connect_command(1)) == [{"id": 1, "connect": {}}]


def test_subscribe_command_with_recovery_and_tags_filter() -> None:
    client = _sdk_client()
    sub = client.new_subscription(
        "chat:1",
        token="st",
        data=b'{"b":2}',
        positioned=True,
        recoverable=True,
        join_leave=True,
        tags_filter=Filter.all(Filter.eq("k", "v"), Filter.is_in("x", ["1", "2"])),
    )
    sub._recover, sub._epoch, sub._offset = True, "xJ3k", 2**40
    assert _decode_sdk(client._construct_subscribe_command(sub, 2)) == [
        {
            "id": 2,
            "subscribe": {
                "channel": "chat:1",
                "token": "st",
                "data": b'{"b":2}',
                "positioned": True,
                "recoverable": True,
                "join_leave": True,
                "recover": True,
                "epoch": "xJ3k",
                "offset": 2**40,
                "flag": 1,
                "tf": {
                    "op": "and",
                    "nodes": [
                        {"key": "k", "cmp": "eq", "val": "v"},
                        {"key": "x", "cmp": "in", "vals": ["1", "2"]},
                    ],
                },
            },
        }
    ]


def test_batch_of_commands_in_order() -> None:
    """Shaped as client.py builds them; the SDK base64-encodes bytes for ParseDict."""
    client = _sdk_client()
    commands = [
        {"id": 3, "publish": {"channel": "c", "data": client._encode_data(b'{"a":1}')}},
        {"id": 4, "rpc": {"method": "m", "data": client._encode_data(b"[]")}},
        {"id": 5, "presence": {"channel": "c"}},
        {"id": 6, "presence_stats": {"channel": "c"}},
        {"id": 7, "unsubscribe": {"channel": "c"}},
        {"id": 8, "refresh": {"token": "t2"}},
        {"id": 9, "sub_refresh": {"channel": "c", "token": "t3"}},
        {
            "id": 10,
            "history": {
                "channel": "c",
                "limit": -1,
                "reverse": True,
                "since": {"offset": 3, "epoch": "e"},
            },
        },
    ]
    assert _decode_sdk(*commands) == [
        {"id": 3, "publish": {"channel": "c", "data": b'{"a":1}'}},
        {"id": 4, "rpc": {"method": "m", "data": b"[]"}},
        *commands[2:],
    ]


def test_zero_values_are_absent_like_in_json() -> None:
    """Python always sends history's limit and reverse; at 0/false they vanish on the wire."""
    command = {"id": 1, "history": {"channel": "c", "limit": 0, "reverse": False}}
    assert _decode_sdk(command) == [{"id": 1, "history": {"channel": "c"}}]


def test_empty_bodies_keep_their_method_key() -> None:
    assert _decode_sdk({"id": 3, "unsubscribe": {}}, {"id": 4, "ping": {}}) == [
        {"id": 3, "unsubscribe": {}},
        {"id": 4, "ping": {}},
    ]


def test_pong_is_an_empty_command() -> None:
    assert _decode_sdk({}) == [{}]
    assert codec.decode(b"\x00\x00") == [{}, {}]
    assert codec.decode(b"") == []


# --- replies and pushes the SDK reads ----------------------------------------------------------


def _sdk_reads(*messages: dict[str, Any]) -> list[dict[str, Any]]:
    return sdk.decode_replies(codec.join([codec.encode(message) for message in messages]))


def test_ping() -> None:
    assert codec.ping == codec.encode({}) == b"\x00"
    assert sdk.decode_replies(codec.ping) == [{}]


def test_connect_result() -> None:
    pub = {"data": b'{"hr":150}', "offset": 4}
    (reply,) = _sdk_reads(
        {
            "id": 1,
            "connect": {
                "client": "5f1c",
                "version": "1.0.0",
                "expires": True,
                "ttl": 3540,
                "data": b'{"plan":"pro"}',
                "subs": {
                    "user:1": {
                        "recoverable": True,
                        "positioned": True,
                        "epoch": "e",
                        "offset": 4,
                        "publications": [pub],
                    }
                },
                "ping": 25,
                "pong": True,
            },
        }
    )
    connect = reply["connect"]
    assert reply["id"] == 1
    assert (connect["client"], connect["ping"], connect["pong"], connect["ttl"]) == (
        "5f1c",
        25,
        True,
        3540,
    )
    sub = connect["subs"]["user:1"]
    assert (sub["recoverable"], sub["epoch"], int(sub["offset"])) == (True, "e", 4)
    client = _sdk_client()
    assert client._decode_data(connect["data"]) == b'{"plan":"pro"}'
    publication = client._publication_from_proto(sub["publications"][0])
    assert (publication.data, publication.offset) == (b'{"hr":150}', 4)


def test_publication_push() -> None:
    (reply,) = _sdk_reads(
        {
            "push": {
                "channel": "session:9",
                "pub": {
                    "data": b'{"hr":151}',
                    "offset": 2**33,
                    "time": 1755849600000,
                    "tags": {"kind": "hr"},
                    "info": {"user": "42", "client": "c1", "conn_info": b'{"n":1}'},
                },
            }
        }
    )
    push = reply["push"]
    assert "id" not in reply and push["channel"] == "session:9"
    publication = _sdk_client()._publication_from_proto(push["pub"])
    assert publication.data == b'{"hr":151}'
    assert publication.offset == 2**33
    assert publication.tags == {"kind": "hr"}
    assert publication.info.user == "42" and publication.info.conn_info == b'{"n":1}'


def test_error_reply() -> None:
    assert _sdk_reads({"id": 2, "error": {"code": 103, "message": "permission denied"}}) == [
        {"id": 2, "error": {"code": 103, "message": "permission denied"}}
    ]


def test_empty_results_keep_their_key() -> None:
    assert _sdk_reads({"id": 4, "publish": {}}, {"id": 5, "unsubscribe": {}}) == [
        {"id": 4, "publish": {}},
        {"id": 5, "unsubscribe": {}},
    ]


def test_presence_result_with_empty_client_info() -> None:
    (reply,) = _sdk_reads({"id": 6, "presence": {"presence": {"c1": {"user": "u"}, "c2": {}}}})
    assert reply["presence"] == {"presence": {"c1": {"user": "u"}, "c2": {}}}


def test_unknown_outbound_key_is_a_bug() -> None:
    with pytest.raises(ValueError):
        codec.encode({"id": 1, "publish": {"nope": 1}})


def test_our_replies_decode_back_to_the_internal_dict() -> None:
    reply = {
        "id": 7,
        "history": {
            "publications": [{"data": b"1", "offset": 1}, {"data": b"2", "offset": 2}],
            "epoch": "e",
            "offset": 2,
        },
    }
    (body,) = split_uvarint_stream(codec.encode(reply))
    assert message_to_dict(client_pb2.Reply.FromString(body)) == reply


# --- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x80", id="truncated prefix"),
        pytest.param(b"\x05\x08\x01", id="shorter than its prefix"),
        pytest.param(put_uvarint(2) + b"\xff\xff", id="garbage body"),
        pytest.param(put_uvarint(2) + b"\x08\x80", id="truncated varint field"),
        pytest.param(put_uvarint(4) + b"\x3a\x02\x0a\x05", id="nested length overflows"),
        pytest.param(put_uvarint(5) + b"\x3a\x03\x0a\x01\xff", id="channel not utf-8"),
        pytest.param(codec.encode({"id": 1}) + b"\x03", id="valid then torn"),
    ],
)
def test_malformed_frames(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.decode(payload)
