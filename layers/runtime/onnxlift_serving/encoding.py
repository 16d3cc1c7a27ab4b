"""Request bodies as bytes: the proxy event's body, and its Content-Encoding (gzip, deflate).

Decompression is bounded: the decoded size counts against the payload limit, and decoding
stops one byte past it (413), so a small compressed body can never expand without bound.
Bad compressed data is a 400; a coding other than gzip, deflate or identity is a 415.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping

from onnxlift_serving.contract import ContentEncoding
from onnxlift_serving.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from onnxlift_serving.protocol import body_bytes

_CHUNK = 64 * 1024
# wbits for zlib.decompressobj: gzip wrapper, zlib wrapper, raw deflate.
_GZIP, _ZLIB, _RAW = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header's value, whatever the case of its name (proxy events keep the client's)."""
    if not headers:
        return None
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def lowered(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers keyed by lower-case name: one pass, for a request that reads several."""
    return {k.lower(): v for k, v in headers.items()} if headers else {}


def event_body(body: str | None, is_base64: bool) -> bytes:
    """The request body of an API Gateway proxy event, as the bytes the client sent."""
    if not body:
        return b""
    if not is_base64:
        return body_bytes(body)  # a lone surrogate has no UTF-8 bytes: 400
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise BadRequest("request body is not valid base64") from None


def codings(value: str | None) -> list[ContentEncoding]:
    """The codings of a Content-Encoding header, in the order they were applied (415 if any
    is unknown)."""
    names = [part.strip().lower() for part in (value or "").split(",") if part.strip()]
    found: list[ContentEncoding] = []
    for name in names:
        try:
            found.append(ContentEncoding(name))
        except ValueError:
            supported = ", ".join(c.value for c in ContentEncoding)
            raise UnsupportedMediaType(
                f"Content-Encoding '{name}' is not supported; send one of: {supported}"
            ) from None
    return [c for c in found if c is not ContentEncoding.IDENTITY]


def _inflate(data: bytes, wbits: int, limit: int, coding: str) -> bytes:
    """Decompress `data` (several gzip members in a row too), at most `limit` bytes out."""
    out = bytearray()
    rest = data
    while rest:
        engine = zlib.decompressobj(wbits)
        try:
            while rest and not engine.eof:
                out += engine.decompress(rest, limit + 1 - len(out))
                rest = engine.unconsumed_tail
                if len(out) > limit:
                    raise PayloadTooLarge(
                        f"request body decompresses to more than {limit} bytes; the limit is "
                        f"{limit}"
                    )
        except zlib.error as exc:
            raise BadRequest(f"request body is not valid {coding} data: {exc}") from None
        if not engine.eof:
            raise BadRequest(f"request body is truncated {coding} data")
        rest = engine.unused_data if wbits == _GZIP else b""
        if wbits != _GZIP and engine.unused_data:
            raise BadRequest(f"request body has bytes after its {coding} data")
    return bytes(out)


def _decode_one(data: bytes, coding: ContentEncoding, limit: int) -> bytes:
    if coding in (ContentEncoding.GZIP, ContentEncoding.X_GZIP):
        return _inflate(data, _GZIP, limit, "gzip")
    # RFC 9110's deflate is the zlib format; some clients send raw deflate: take both.
    wrapped = len(data) >= 2 and (data[0] & 0x0F) == 8 and int.from_bytes(data[:2]) % 31 == 0
    return _inflate(data, _ZLIB if wrapped else _RAW, limit, "deflate")


def decode_content(body: bytes, content_encoding: str | None, *, max_bytes: int) -> bytes:
    """`body` with its Content-Encoding undone, at most `max_bytes` long (else 413).

    A body that starts with `{` is taken as decoded already: API Gateway documents that it
    decompresses gzip and deflate request bodies itself before the integration, and neither
    format can start with that byte (a gzip member starts 0x1f, a zlib stream 0x?8)."""
    if content_encoding is None:  # the usual request: no header, nothing to parse
        return body
    steps = codings(content_encoding)
    if not steps or body[:1] == b"{":
        return body
    for coding in reversed(steps):
        body = _decode_one(body, coding, max_bytes)
    return body
