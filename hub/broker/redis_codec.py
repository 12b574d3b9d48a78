"""What nodes send each other through Redis, and what a channel's keys are called.

A publication is stored and sent as one msgpack array, `[data, time, tags, user, client,
conn_info, chan_info]` (the last four only when it has a publisher), with every payload kept as
the bytes it came as: nothing is parsed or re-serialised on the way. What goes over a channel's
pub/sub is that array behind a one-letter kind:

- `p<offset>:<epoch>:<publication>` a publication (the publish script writes the offset and
  epoch it assigned, so every node learns them from the message itself),
- `j<info>` / `l<info>` a join / leave, `<info>` being `[user, client, conn_info, chan_info]`.

Control messages go over a channel of their own as the caller's bytes, untouched.

Keys carry the channel as a Redis Cluster hash tag, `<prefix>:{<channel>}:<kind>`, so a
channel's meta, history and presence keys, and its pub/sub channel, share one hash slot: a
script may touch all of them (and SPUBLISH) on a cluster. A channel whose name holds a brace is
tagged by a digest of its name instead, since Redis would cut the tag at the first `}`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from hub.broker.base import ClientInfo, Publication

KIND_PUBLICATION = ord("p")
KIND_JOIN = ord("j")
KIND_LEAVE = ord("l")
JOIN_PREFIX = b"j"
LEAVE_PREFIX = b"l"

_pack = msgpack.Packer(use_bin_type=True).pack


def encode_publication(
    data: bytes, time_ms: int, info: ClientInfo | None, tags: dict[str, str] | None
) -> bytes:
    if info is None:
        packed: bytes = _pack([data, time_ms, tags])
    else:
        packed = _pack(
            [data, time_ms, tags, info.user, info.client, info.conn_info, info.chan_info])
    return packed


def decode_publication(raw: bytes, offset: int, epoch: str) -> Publication:
    fields = msgpack.unpackb(raw, raw=False)
    info = None if len(fields) == 3 else ClientInfo(*fields[3:7])
    return Publication(
        data=fields[0], offset=offset, time=fields[1], info=info, tags=fields[2], epoch=epoch
    )


def encode_info(info: ClientInfo) -> bytes:
    packed: bytes = _pack([info.user, info.client, info.conn_info, info.chan_info])
    return packed


def decode_info(raw: bytes | memoryview) -> ClientInfo:
    user, client, conn_info, chan_info = msgpack.unpackb(raw, raw=False)
    return ClientInfo(user, client, conn_info, chan_info)


def decode_published(message: bytes) -> Publication:
    """A `p<offset>:<epoch>:<publication>` message as the publish script sent it."""
    offset, epoch, body = message[1:].split(b":", 2)
    return decode_publication(body, int(offset), epoch.decode())


def stream_offset(entry_id: bytes) -> int:
    """The offset of a history stream entry: its id is `<offset>-0`."""
    return int(entry_id.partition(b"-")[0])


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """Every Redis name of one channel; all of them hash to the same cluster slot."""

    tag: bytes
    """`{...}`: what decides the slot (and, sharded, what the shard is chosen by)."""
    pubsub: bytes
    meta: bytes
    stream: bytes
    presence_set: bytes
    presence_hash: bytes


class KeySpace:
    """Names under one prefix, so deployments and test runs can share a Redis."""

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"Redis prefix must be non-empty and without braces: {prefix!r}")
        self._prefix = prefix.encode()
        self.control = self._prefix + b":control"
        """The node-to-node control channel (no tag: it belongs to no hub channel)."""

    @property
    def prefix(self) -> bytes:
        return self._prefix

    def channel(self, channel: str) -> ChannelKeys:
        name = channel.encode()
        if b"{" in name or b"}" in name:
            tag = b"{#" + hashlib.blake2b(name, digest_size=12).hexdigest().encode() + b"}"
            base = self._prefix + b":" + tag + name
        else:
            tag = b"{" + name + b"}"
            base = self._prefix + b":" + tag
        return ChannelKeys(
            tag=tag,
            pubsub=base,
            meta=base + b":m",
            stream=base + b":h",
            presence_set=base + b":z",
            presence_hash=base + b":p",
        )
