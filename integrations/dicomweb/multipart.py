"""multipart/related bodies (RFC 2387) as DICOMweb uses them (PS3.18 8.6.1.2): split a request's
parts, and build a response of parts. Parts are kept as bytes: DICOM files are binary."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_PARAM = re.compile(r';\s*([A-Za-z0-9_-]+)\s*=\s*("([^"]*)"|[^;\s]+)')


class MultipartError(ValueError):
    """The body is not the multipart/related it says it is."""


@dataclass(frozen=True)
class Part:
    content_type: str
    data: bytes


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """("multipart/related", {"type": ..., "boundary": ...}) from a Content-Type header."""
    media = content_type.split(";", 1)[0].strip().lower()
    params = {
        m.group(1).lower(): m.group(3) if m.group(3) is not None else m.group(2)
        for m in _PARAM.finditer(content_type)
    }
    return media, params


def parts_split(body: bytes, boundary: str) -> list[Part]:
    """The parts between `--boundary` delimiters, up to the closing `--boundary--`."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("the multipart boundary is missing or too long")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise MultipartError("no parts between the boundaries")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, data = chunk.partition(b"\n\n")
        if not sep:
            raise MultipartError("a part has no blank line after its headers")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        content_type = ""
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                content_type = value.strip()
        parts.append(Part(content_type=content_type, data=data))
    else:
        raise MultipartError("the body does not end with the close delimiter")
    return parts


def parts_build(parts: list[Part]) -> tuple[bytes, str]:
    """(body, boundary) of a multipart/related response."""
    boundary = secrets.token_hex(16)
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part.content_type}\r\n\r\n".encode("latin-1")
        out += part.data + b"\r\n"
    out += f"--{boundary}--\r\n".encode("latin-1")
    return bytes(out), boundary
