"""From MLLP frames to domain calls and back to ACKs.

Receive path per message: read and check the MSH and the segments the type requires (fast, no
hl7apy), ask the domain whether it handles the type, hand the message to the group committer, and
answer only when its transaction has committed (invariant 1). Everything refused is kept as a
rejection before its NAK goes out (invariant 4)."""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import close_old_connections, connection

from fhirai import errors as domain
from fhirai.ingest.messages import (
    Inbound,
    Stored,
    message_accepts,
    messages_dispatch,
    messages_receive,
    messages_receive_async,
    postgres_params,
)
from fhirai.ingest.receive import input_reject
from fhirai.ingest.sources import mllp_networks
from integrations.hl7 import ack, errors
from integrations.hl7.errors import HL7Error
from integrations.hl7.mllp import Frame
from integrations.hl7.msh import Header, header_parse

log = logging.getLogger(__name__)
MAX_BATCH = 256
DISPATCH_INTERVAL = 0.05
SEGMENT_ID = re.compile(rb"(?:^|[\r\n])([A-Z][A-Z0-9]{2})")
REQUIRED = {"ADT": ("PID",), "ORM": ("PID", "OBR"), "OMI": ("PID", "OBR"), "ORU": ("PID", "OBR")}
DOMAIN_CODES = {
    "unsupported-message-type": errors.UNSUPPORTED_MESSAGE_TYPE,
    "unsupported-event": errors.UNSUPPORTED_EVENT,
}


def structure_check(raw: bytes, header: Header) -> None:
    """The segments the message type cannot do without (HL7 v2.5.1 ch. 3, 4, 7 abstract syntaxes)."""
    present = set(SEGMENT_ID.findall(raw))
    needed = list(REQUIRED.get(header.message_code, ()))
    if header.message_type == "ADT^A40":
        needed.append("MRG")
    for name in needed:
        if name.encode() not in present:
            raise HL7Error(errors.SEGMENT_SEQUENCE, f"required segment {name} is missing", location=name)


def inbound_from(raw: bytes, peer: str) -> tuple[Header, Inbound]:
    """Check one message at the door; HL7Error says what to refuse and how."""
    header = header_parse(raw)
    structure_check(raw, header)
    try:
        message_accepts(header.message_type)
    except domain.InvalidInput as exc:
        raise HL7Error(
            DOMAIN_CODES.get(exc.code, errors.UNSUPPORTED_MESSAGE_TYPE),
            exc.detail,
            location="MSH^1^9",
            reject=True,
        ) from None
    return header, Inbound(
        raw=raw,
        sender=header.sender[:200],
        control_id=header.control_id,
        message_type=header.message_type,
        version=header.version,
        codec=header.codec,
        peer=peer,
        enhanced=header.enhanced,
        app_ack=(header.application_ack or "AL") if header.enhanced else "",
    )


def reply_for(header: Header | None, stored: Stored | None, error: HL7Error | None) -> bytes | None:
    """The acknowledgment to send (None when enhanced mode asked for none)."""
    enhanced = bool(header and header.enhanced)
    if error is not None:
        code = ack.for_error(error, enhanced=enhanced)
    else:
        code = ack.CA if enhanced else ack.AA
    if header is not None and enhanced and not ack.accept_wanted(header, code):
        return None
    text = ack.build(header, code, error=error)
    return text.encode(header.codec if header else "ascii", errors="replace")


@dataclass
class _Pending:
    inbound: Inbound
    future: asyncio.Future[Stored] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Committer:
    """Group commit: each of a few committer threads writes everything that queued up while it was
    busy in one transaction; each waiting connection gets its message's row (or the failure)
    afterwards. Two threads keep one batch committing while the next is being written. Processing
    is queued by another thread, coalesced to the newest id, so the broker's latency never sits
    between a commit and its ACKs."""

    def __init__(self, threads: int = 2) -> None:
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executors = [ThreadPoolExecutor(1, thread_name_prefix=f"hl7-commit-{i}") for i in range(threads)]
        self.dispatcher = ThreadPoolExecutor(1, thread_name_prefix="hl7-dispatch")
        self.tasks: list[asyncio.Task[None]] = []
        self.newest = 0
        self.dispatched = 0
        self.busy = 0
        self.wake = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._run(executor)) for executor in self.executors]
        self.tasks.append(loop.create_task(self._dispatch()))

    async def submit(self, inbound: Inbound) -> Stored:
        pending = _Pending(inbound)
        await self.queue.put(pending)
        return await pending.future

    async def run_blocking(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run other database work (rejections) on a committer thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executors[0], _with_connection, fn, *args
        )

    async def _run(self, executor: ThreadPoolExecutor) -> None:
        pg = postgres_params()
        aconn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                batch = [await self.queue.get()]
                while not self.queue.empty() and len(batch) < MAX_BATCH:
                    batch.append(self.queue.get_nowait())
                self.busy += 1
                try:
                    if pg is not None:
                        # PostgreSQL: commit on an asyncio connection of this committer's own, no thread hop.
                        if aconn is None or aconn.closed:
                            aconn = await _connect(pg)
                        results = await messages_receive_async([p.inbound for p in batch], aconn)
                    else:
                        results = await asyncio.get_running_loop().run_in_executor(
                            executor, _with_connection, messages_receive, [p.inbound for p in batch]
                        )
                except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                    if aconn is not None:
                        await aconn.close()
                        aconn = None
                    failure = exc if isinstance(exc, domain.Unavailable) else domain.Unavailable(str(exc))
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(failure)
                    continue
                finally:
                    self.busy -= 1
                for p, stored in zip(batch, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(stored)
                fresh = [s.message_id for s in results if not s.duplicate]
                if fresh:
                    self.newest = max(self.newest, *fresh)
                    self.wake.set()
        finally:
            if aconn is not None:
                await aconn.close()

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            newest = self.newest
            if newest <= self.dispatched:
                continue
            try:
                await loop.run_in_executor(self.dispatcher, messages_dispatch, newest)
                self.dispatched = newest
            except Exception:  # noqa: BLE001 - the sweep dispatches what this could not
                log.exception("could not queue HL7 processing up to message %s; the sweep will", newest)
            # At most one publish per interval: a publish costs milliseconds of CPU (and the GIL),
            # and one task processes everything up to the newest id anyway.
            await asyncio.sleep(DISPATCH_INTERVAL)

    async def stop(self, grace: float = 15.0) -> None:
        """Finish every batch taken or queued (their ACKs follow their commits), then close."""
        deadline = asyncio.get_running_loop().time() + grace
        while (not self.queue.empty() or self.busy) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        if self.newest > self.dispatched:
            self.wake.set()
            await asyncio.sleep(0.2)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for executor in self.executors:
            await loop.run_in_executor(executor, _close_connection)
            executor.shutdown(wait=True)
        self.dispatcher.shutdown(wait=True)


async def _connect(params: dict[str, Any]) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(**params)
    except psycopg.Error as exc:
        raise domain.Unavailable(f"database: {type(exc).__name__}") from exc


def _with_connection(fn, *args):  # type: ignore[no-untyped-def]
    close_old_connections()
    return fn(*args)


class MessageHandler:
    """The MLLP server's frame handler."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer

    async def __call__(self, frame: Frame, peer: str) -> bytes | None:
        header: Header | None = None
        try:
            if frame.problem:
                raise HL7Error(
                    errors.SEGMENT_SEQUENCE
                    if frame.problem == "truncated"
                    else errors.APPLICATION_INTERNAL_ERROR,
                    f"MLLP frame {frame.problem}",
                    reject=True,
                )
            header, inbound = inbound_from(frame.payload, peer)
        except HL7Error as exc:
            header = header or header_or_none(frame.payload)
            await self._reject(frame.payload, peer, exc)
            return reply_for(header, None, exc)
        try:
            stored = await self.committer.submit(inbound)
        except domain.Unavailable as exc:
            log.warning("HL7 from %s refused, storage unavailable: %s", peer, exc)
            return reply_for(
                header,
                None,
                HL7Error(
                    errors.APPLICATION_INTERNAL_ERROR,
                    "temporarily unable to store the message; send it again later",
                    reject=True,
                ),
            )
        if stored.duplicate:
            log.info("HL7 message %s from %s is a resend: acknowledged again", stored.message_id, peer)
        return reply_for(header, stored, None)

    async def _reject(self, raw: bytes, peer: str, exc: HL7Error) -> None:
        try:
            await self.committer.run_blocking(
                lambda: input_reject(
                    protocol="hl7", raw=raw, peer=peer, code=exc.condition[0], detail=str(exc)
                )
            )
        except Exception:  # noqa: BLE001 - the NAK must still go out
            log.exception("could not keep rejected HL7 input from %s", peer)

    async def allowed_networks(self) -> list[str]:
        """The networks MLLP senders may connect from now (read on a committer thread: the
        console's rules are in the database)."""
        return await self.committer.run_blocking(mllp_networks)

    async def refused(self, peer: str) -> None:
        """A connection from outside the allowed networks: closed unanswered, and kept visible."""
        try:
            await self.committer.run_blocking(
                lambda: input_reject(
                    protocol="hl7",
                    raw=b"",
                    peer=peer,
                    code="sender-not-allowed",
                    detail="MLLP connection refused: the address is not on the allowed networks",
                )
            )
        except Exception:  # noqa: BLE001 - the refusal stands even when it cannot be recorded
            log.exception("could not record a refused MLLP connection")

    async def abandoned(self, raw: bytes, peer: str) -> None:
        """A connection closed inside a frame: nobody to answer, but the bytes are kept."""
        await self._reject(
            raw,
            peer,
            HL7Error(errors.SEGMENT_SEQUENCE, "connection closed inside an MLLP frame", reject=True),
        )


def header_or_none(raw: bytes) -> Header | None:
    """The header when it can be read (to address a NAK), else None."""
    try:
        return header_parse(raw)
    except HL7Error:
        return None


def _close_connection() -> None:
    connection.close()  # resolves to the calling thread's connection: run it on the committer thread
