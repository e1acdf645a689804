"""MLLP (HL7 v2.5.1 ch. 2 appendix C, Minimal Lower Layer Protocol): <VT> payload <FS><CR>.

Framer reassembles frames across partial reads and splits several frames in one read; bytes
outside a frame are dropped; a new <VT> inside a frame means the previous one was truncated; a frame
over the size limit is skipped to its end. Server is the asyncio listener: one task per connection,
frames answered in order on their connection, optional TLS, a source allow-list, idle timeout."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fhirai.tls import server_context

log = logging.getLogger(__name__)

VT, FS, CR = 0x0B, 0x1C, 0x0D
START, END = b"\x0b", b"\x1c\x0d"


@dataclass(frozen=True)
class Frame:
    """A complete payload, or a broken one (`problem`: truncated or oversize) to be refused."""

    payload: bytes
    problem: str = ""


class Framer:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.buffer = bytearray()
        self.in_frame = False
        self.oversize = False
        # A read that ended with <FS> inside a frame: the end block if the next byte is <CR>, else
        # payload. Held aside, so neither the size check nor a later <CR> mistakes it for either.
        self.held_fs = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        view = memoryview(data)
        i = 0
        while i < len(view):
            if not self.in_frame:
                start = data.find(START, i)
                if start < 0:
                    self.dropped += len(data) - i
                    break
                self.dropped += start - i
                self.in_frame, self.oversize, self.held_fs = True, False, False
                self.buffer.clear()
                i = start + 1
                continue
            if self.held_fs:  # <FS><CR> split across two reads?
                self.held_fs = False
                if view[i] == CR:
                    frames.append(self._finish())
                    i += 1
                    continue
                self._append(memoryview(b"\x1c"))
            end = data.find(END, i)
            restart = data.find(START, i, end if end >= 0 else len(data))
            if restart >= 0:  # a new frame began before this one ended
                self._append(view[i:restart])
                frames.append(Frame(bytes(self.buffer), "truncated"))
                self.in_frame = False
                i = restart
                continue
            if end < 0:
                if view[-1] == FS:
                    self._append(view[i:-1])
                    self.held_fs = True
                else:
                    self._append(view[i:])
                break
            self._append(view[i:end])
            frames.append(self._finish())
            i = end + 2
        return frames

    def _finish(self) -> Frame:
        frame = Frame(bytes(self.buffer), "oversize") if self.oversize else Frame(bytes(self.buffer))
        self.buffer.clear()
        self.in_frame = False
        return frame

    def _append(self, chunk: memoryview) -> None:
        if self.oversize:
            return
        if len(self.buffer) + len(chunk) > self.max_bytes:
            self.oversize = True
            self.buffer = bytearray((bytes(self.buffer) + bytes(chunk))[:4096])  # keep the header for the NAK
            return
        self.buffer += chunk

    def pending(self) -> bytes | None:
        """What a closed connection left unfinished."""
        if not self.in_frame:
            return None
        return bytes(self.buffer) + (b"\x1c" if self.held_fs and not self.oversize else b"")


FrameHandler = Callable[[Frame, str], Awaitable[bytes | None]]


def peer_allowed(address: str, allow: list[str]) -> bool:
    """An empty allow-list admits everyone; otherwise the address must be in one of its networks."""
    if not allow:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in allow)


def tls_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext | None:
    """Server TLS (fhirai.tls: the BCP 195 profile) when a certificate is configured; with a CA,
    clients must present a certificate it issued."""
    if not cert:
        return None
    return server_context(cert, key, ca)


class Server:
    def __init__(
        self,
        handler: FrameHandler,
        *,
        max_bytes: int,
        allow: list[str] | Callable[[], Awaitable[list[str]]],
        idle_seconds: float,
        on_abandoned: Callable[[bytes, str], Awaitable[None]] | None = None,
        on_refused: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.handler = handler
        self.max_bytes = max_bytes
        self.allow = allow
        self.idle_seconds = idle_seconds
        self.on_abandoned = on_abandoned
        self.on_refused = on_refused
        self.connections: set[asyncio.Task[None]] = set()
        self.busy: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(
            self._connection, host, port, ssl=tls, reuse_address=True, limit=2**16
        )
        log.info("MLLP listening on %s:%s%s", host, port, " (TLS)" if tls else "")

    @property
    def port(self) -> int:
        assert self.server is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; a connection in the middle of a message finishes it (commit, then ACK)
        before it is closed; idle connections are closed at once."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for task in self.connections - self.busy:
            task.cancel()
        deadline = asyncio.get_running_loop().time() + grace
        while self.busy and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(self.connections, timeout=grace)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
        self.connections.add(task)
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{peername[0]}:{peername[1]}"
        try:
            # A callable gives the networks in effect now (the settings plus the console's rules).
            allow = await self.allow() if callable(self.allow) else self.allow
            if not peer_allowed(str(peername[0]), allow):
                log.warning("MLLP connection from %s refused: not on the allowed networks", peer)
                if self.on_refused is not None:
                    await self.on_refused(peer)
                return
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("MLLP connection %s ended: %s", peer, type(exc).__name__)
        finally:
            self.connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        framer = Framer(self.max_bytes)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(2**16), self.idle_seconds)
                except TimeoutError:
                    log.info("MLLP connection %s idle for %.0f s: closing", peer, self.idle_seconds)
                    return
                if not data:
                    return
                task = asyncio.current_task()
                assert task is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
                self.busy.add(task)  # stop() lets this frame's commit and ACK complete
                try:
                    for frame in framer.feed(data):
                        reply = await self.handler(frame, peer)
                        if reply is not None:
                            writer.write(START + reply + END)
                            await writer.drain()
                        if self.stopping:
                            return
                finally:
                    self.busy.discard(task)
        finally:
            leftover = framer.pending()
            if leftover and self.on_abandoned is not None:
                await self.on_abandoned(leftover, peer)


def exchange(host: str, port: int, payload: bytes, *, timeout: float) -> bytes:
    """Client side: send one framed message and return the framed reply's payload (blocking).
    Raises OSError (including timeouts) when the peer cannot be reached or does not answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(START + payload + END)
        framer = Framer(16 * 1024 * 1024)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the peer closed the connection without an acknowledgment")
            for frame in framer.feed(data):
                if not frame.problem:
                    return frame.payload


def send_only(host: str, port: int, payload: bytes, *, timeout: float) -> None:
    """Client side: deliver one framed message that expects no reply (an application ACK)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(START + payload + END)
