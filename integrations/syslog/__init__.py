"""Syslog out (the site's audit repository, IHE ATNA's transport): RFC 5426 over UDP, RFC 6587
octet counting over TCP, RFC 5425 over TLS. The messages come ready-made from fhirai.audit.forward;
this adapter only puts them on the wire."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from django.conf import settings

from fhirai.tls import client_context

TIMEOUT = 10.0
UDP_MAX = 65507


def syslog_send(url: str, messages: list[bytes]) -> None:
    """Send each message in order; raises OSError when the collector cannot take them (the caller
    keeps its place and sends them again later)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", int(parts.port or 0)
    if parts.scheme == "udp":
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for message in messages:
                sock.sendto(message[:UDP_MAX], (host, port))
        return
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        sock: socket.socket = raw
        if parts.scheme == "tls":
            context = client_context(ca=settings.FHIRAI_AUDIT_SYSLOG_CA)  # the BCP 195 profile
            sock = context.wrap_socket(raw, server_hostname=host)
        # RFC 6587 3.4.1 / RFC 5425 4.3: each message framed as "LENGTH SP MESSAGE".
        sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
        if parts.scheme == "tls":
            sock.close()
