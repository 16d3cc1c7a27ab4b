"""The pool's private line to a sandbox: one end of a socket pair, inherited at spawn.

The local Lambda service hands each event to its sandbox over this channel instead of the
Lambda RIE's HTTP invoke API (which the sandbox still serves, for curl and tests): with the
client, the gateway and the handler on the same few cores, HTTP's request and reply parsing
on both sides cost the gateway ~0.2 ms of CPU per event. The frames are length-prefixed,
one event in flight per channel (the pool holds a sandbox for the event it runs):

    event:  u64 length, the event's bytes
    reply:  u16 status, u32 headers length, u64 body length, headers (JSON object), body

A reply is the invoke API's reply (lambda_runtime's Reply): its status, its headers
(X-Amz-Function-Error for an unhandled error) and its body. A channel whose peer has gone
(the sandbox died, or the pool closed its end) reads as ChannelClosed.
"""

from __future__ import annotations

import socket
import struct
import time

import orjson

_EVENT = struct.Struct(">Q")
_REPLY = struct.Struct(">HIQ")
_FIRST_READ = 1 << 16  # one recv takes a small frame whole, its head included
_SEND_AT_ONCE = 1 << 16  # a body up to this size goes out in one write with its head


class ChannelClosed(ConnectionError):
    """The other end closed the channel (or died) before a whole frame came."""


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(the pool's end, the sandbox's end): a Unix stream socket pair, not inheritable (the
    sandbox's end is passed to its process alone, by pass_fds)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def send_event(channel: socket.socket, event: bytes) -> None:
    _send(channel, _EVENT.pack(len(event)), event)


def receive_event(channel: socket.socket) -> bytes | bytearray | None:
    """The next event, or None when the pool closed its end between events."""
    first = channel.recv(_FIRST_READ)
    if not first:  # nothing of a next frame had come: an orderly end
        return None
    head, data = _receive_head(channel, _EVENT.size, None, first)
    (length,) = _EVENT.unpack_from(head)
    return _receive_rest(channel, data, length, None)


def send_reply(channel: socket.socket, status: int, headers: dict[str, str], body: bytes) -> None:
    encoded = orjson.dumps(headers)
    _send(channel, _REPLY.pack(status, len(encoded), len(body)) + encoded, body)


def receive_reply(
    channel: socket.socket, timeout_s: float
) -> tuple[int, dict[str, str], bytes | bytearray]:
    """(status, headers, body) of the reply; TimeoutError when it has not all come within
    timeout_s, ChannelClosed when the sandbox went away first."""
    deadline = time.monotonic() + timeout_s
    channel.settimeout(timeout_s)
    head, data = _receive_head(channel, _REPLY.size, deadline, channel.recv(_FIRST_READ))
    status, headers_length, body_length = _REPLY.unpack_from(head)
    rest = _receive_rest(channel, data, headers_length + body_length, deadline)
    headers = orjson.loads(rest[:headers_length]) if headers_length else {}
    body = rest[headers_length:] if headers_length else rest
    return status, headers, body


def _send(channel: socket.socket, head: bytes, body: bytes) -> None:
    if len(body) <= _SEND_AT_ONCE:
        channel.sendall(head + body)
    else:  # not joined: a 10 MB event is not copied for its 8-byte head
        channel.sendall(head)
        channel.sendall(body)


def _receive_head(
    channel: socket.socket, size: int, deadline: float | None, data: bytes
) -> tuple[bytes, bytes]:
    """(the frame's head, what came after it in the same reads), `data` the first read."""
    if not data:
        raise ChannelClosed("the channel closed before a frame")
    while len(data) < size:
        _check(channel, deadline)
        more = channel.recv(_FIRST_READ)
        if not more:
            raise ChannelClosed("the channel closed inside a frame's head")
        data += more
    return data[:size], data[size:]


def _receive_rest(
    channel: socket.socket, data: bytes, length: int, deadline: float | None
) -> bytes | bytearray:
    """The `length` bytes after the head, `data` being those that came with it."""
    if len(data) == length:
        return data
    if len(data) > length:  # one frame at a time: the peer sent more than it framed
        raise ChannelClosed(f"{len(data) - length} bytes past the end of a frame")
    buffer = bytearray(length)  # filled in place: a large body is not copied again
    buffer[: len(data)] = data
    view, got = memoryview(buffer), len(data)
    while got < length:
        _check(channel, deadline)
        count = channel.recv_into(view[got:], min(length - got, 1 << 20))
        if not count:
            raise ChannelClosed(f"the channel closed {length - got} bytes short of a frame")
        got += count
    view.release()
    return buffer


def _check(channel: socket.socket, deadline: float | None) -> None:
    """Between two reads of a frame: the next read waits only for what is left of the time."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the reply did not come in time")
    channel.settimeout(left)
