"""A PNG's text chunks, read without decoding a pixel and each capped.

Pillow's `image.text` decodes every pixel (and seeks every APNG frame) to find text chunks after the image data, and
inflates a compressed chunk up to 1 MB: a 1.6 KB file can carry a megabyte of text. PNG Info needs only the text, and
A1111's infotext is a few KB, so this walks the chunks (PNG spec section 5.3: length, type, data, CRC) and inflates
with a limit. Text chunks: `tEXt` (Latin-1), `zTXt` (Latin-1, deflated), `iTXt` (UTF-8, optionally deflated).
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_CHARS = 65_536  # per chunk; A1111's `parameters` with ControlNet and ADetailer units is a few thousand
MAX_CHUNKS = 100_000  # a PNG of the largest upload in 256-byte chunks; real files have tens


class TextTooLong(ValueError):
    """A text chunk longer than MAX_TEXT_CHARS: not the settings of a picture."""


def is_png(data: bytes) -> bool:
    return data.startswith(SIGNATURE)


def png_texts(data: bytes, keys: tuple[str, ...], limit: int = MAX_TEXT_CHARS) -> dict[str, str]:
    """The text of the chunks named `keys` (the first of each), each at most `limit` characters (else TextTooLong).
    A truncated or malformed file gives what was read before the damage, as viewers do."""
    found: dict[str, str] = {}
    offset = len(SIGNATURE)
    for _ in range(MAX_CHUNKS):
        if offset + 8 > len(data) or len(found) == len(keys):
            break
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IEND" or len(body) < length:
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, _, rest = body.partition(b"\0")
            name = key.decode("latin-1")
            if name in keys and name not in found:
                text = _text(kind, rest, limit)
                if text is not None:
                    found[name] = text
    return found


def _text(kind: bytes, rest: bytes, limit: int) -> str | None:
    """One chunk's text after its keyword; None when it cannot be inflated."""
    if kind == b"tEXt":
        raw, encoding = rest, "latin-1"
    elif kind == b"zTXt":
        raw, encoding = _inflate(rest[1:], limit * 4), "latin-1"
    else:
        compressed, rest = rest[0:1] == b"\1", rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, rest = rest.partition(b"\0")
        raw, encoding = (_inflate(rest, limit * 4) if compressed else rest), "utf-8"
    if raw is None:
        return None
    text = raw[:limit * 4 + 1].decode(encoding, errors="replace")
    if len(raw) > limit * 4 or len(text) > limit:
        raise TextTooLong(f"its text is longer than {limit // 1024} K characters")
    return text


def _inflate(data: bytes, max_bytes: int) -> bytes | None:
    """At most `max_bytes + 1` inflated bytes: one more than allowed says "too long" without inflating the rest."""
    try:
        return zlib.decompressobj().decompress(data, max_bytes + 1)
    except zlib.error:
        return None
