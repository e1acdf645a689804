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

from django.db import close_old_connections, connection

from fhirai import errors as domain
from fhirai.ingest.messages import Inbound, Stored, message_accepts, messages_receive
from fhirai.ingest.receive import input_reject
from integrations.hl7 import ack, errors
from integrations.hl7.errors import HL7Error
from integrations.hl7.mllp import Frame
from integrations.hl7.msh import Header, header_parse

log = logging.getLogger(__name__)
MAX_BATCH = 256
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
    """Group commit: one thread writes everything that queued up while the last commit ran, in one
    transaction; each waiting connection gets its message's row (or the failure) afterwards."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hl7-commit")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, inbound: Inbound) -> Stored:
        pending = _Pending(inbound)
        await self.queue.put(pending)
        return await pending.future

    async def run_blocking(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run other database work (rejections) on the same thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, _with_connection, fn, *args)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self.queue.get_nowait())
            try:
                results = await self.run_blocking(messages_receive, [p.inbound for p in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(
                            exc if isinstance(exc, domain.Unavailable) else domain.Unavailable(str(exc))
                        )
                continue
            for p, stored in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(stored)

    async def stop(self) -> None:
        while not self.queue.empty():
            await asyncio.sleep(0.05)
        if self.task is not None:
            self.task.cancel()
        await asyncio.get_running_loop().run_in_executor(self.executor, _close_connection)
        self.executor.shutdown(wait=True)


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
            header = header or _header_or_none(frame.payload)
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

    async def abandoned(self, raw: bytes, peer: str) -> None:
        """A connection closed inside a frame: nobody to answer, but the bytes are kept."""
        await self._reject(
            raw,
            peer,
            HL7Error(errors.SEGMENT_SEQUENCE, "connection closed inside an MLLP frame", reject=True),
        )


def _header_or_none(raw: bytes) -> Header | None:
    try:
        return header_parse(raw)
    except HL7Error:
        return None


def _close_connection() -> None:
    connection.close()  # resolves to the calling thread's connection: run it on the committer thread
