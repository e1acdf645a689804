"""HL7 v2 receive path: the MLLP listener's frame handler (integrations.hl7.handlers.MessageHandler)
with its real group committer on PostgreSQL, then the processing stage (messages_process, which
runs the configured reader). Any input gets an ACK (AA/CA, or AE/AR/CE/CR with ERR) and never an
exception; what is acknowledged is stored, what is refused is kept, and processing settles it."""

from __future__ import annotations

import logging

import pytest

from fhirai.context.messages import messages_process
from fhirai.ingest.models import Message, MessageState, Rejection
from integrations.hl7.handlers import header_or_none
from integrations.hl7.mllp import Frame
from tests.fuzz.budget import fuzz_target
from tests.fuzz.hl7gen import hl7_input, mutated_message

pytestmark = pytest.mark.django_db(transaction=True)


def _fields(reply: bytes, codec: str) -> dict[str, list[str]]:
    text = reply.decode(codec)
    assert text.startswith("MSH"), text[:20]
    fs = text[3]
    return {seg[:3]: seg.split(fs) for seg in text.split("\r") if seg}


def check_receive(handler, caplog, raw: bytes) -> None:
    loop, handle = handler
    caplog.clear()
    rejections = Rejection.objects.count()
    reply = loop.run_until_complete(handle(Frame(raw), "fuzz@127.0.0.1:1"))
    header = header_or_none(raw)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    if reply is None:  # enhanced mode that asked for no accept acknowledgment
        assert header is not None and header.enhanced
        return
    segments = _fields(reply, header.codec if header else "ascii")
    code = segments["MSA"][1]
    assert code in ("AA", "AE", "AR", "CA", "CE", "CR")
    if code in ("AA", "CA"):
        assert "ERR" not in segments
        message = Message.objects.get(sender=header.sender[:200], control_id=header.control_id)
        messages_process(message.pk)
        message.refresh_from_db()
        assert message.state in (MessageState.PROCESSED, MessageState.FAILED)
    else:
        assert "ERR" in segments
        assert Rejection.objects.count() == rejections + 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


@fuzz_target("hl7_receive_any_bytes", ci=200, raw=hl7_input)
def test_any_input_gets_an_ack_and_is_stored_or_kept(handler, caplog, raw):
    check_receive(handler, caplog, raw)


@fuzz_target("hl7_receive_mutated_messages", ci=250, raw=mutated_message())
def test_mutated_messages_get_an_ack_and_are_stored_or_kept(handler, caplog, raw):
    check_receive(handler, caplog, raw)
