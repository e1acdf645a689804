"""C-STORE, C-ECHO and storage commitment N-EVENT-REPORT handlers: event in, one domain call,
status out. store_answer() and commitment_answer() are the decisions both SCP engines share
(integrations.dicom.acceptor, and pynetdicom's through handle_store / handle_commitment_report)."""

from __future__ import annotations

import logging

from django.conf import settings
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from fhirai import errors
from fhirai.ingest.receive import input_reject, instance_receive
from fhirai.results.commitment import commitment_report
from fhirai.routing.priors import prior_instance_receive
from integrations.dicom import status

log = logging.getLogger(__name__)


def peer_of(event: Event) -> str:
    info = event.assoc.requestor
    return f"{info.ae_title}@{info.address}:{info.port}"


def handle_echo(event: Event) -> int:
    """C-ECHO (PS3.7 9.1.5): Success."""
    return status.SUCCESS


def handle_store(event: Event) -> Dataset | int:
    """C-STORE on pynetdicom's engine. Success means the bytes are committed (DESIGN invariant 1)."""
    code, comment = store_answer(
        raw=event.encoded_dataset(),
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
        called_ae=called_ae_of(event),
        peer=peer_of(event),
        transfer_syntax_uid=str(event.context.transfer_syntax),
    )
    return _failure(code, comment) if comment else code


def store_answer(
    *, raw: bytes, calling_ae: str, called_ae: str = "", peer: str, transfer_syntax_uid: str
) -> tuple[int, str]:
    """The C-STORE status for a received Part 10 stream, with its Error Comment (0000,0902) ("" for
    none, at most 64 characters, LO). Success only once the instance is committed. Sent to the
    priors AE title (a prior fetch's move destination): kept as a prior, if one is being moved."""
    receive = prior_instance_receive if called_ae == settings.FHIRAI_PRIORS_AE else instance_receive
    try:
        receive(raw=raw, calling_ae=calling_ae, transfer_syntax_uid=transfer_syntax_uid)
    except errors.InvalidInput as exc:
        code = status.for_invalid(exc.code)
        try:
            input_reject(protocol="dicom", raw=raw, peer=peer, code=exc.code, detail=exc.detail)
        except Exception:  # noqa: BLE001 - the refusal must still go out
            log.exception("could not keep rejected DICOM input from %s", peer)
            return status.OUT_OF_RESOURCES, "cannot keep it now; retry later"
        if exc.code in status.KEPT_CODES:
            # Kept (durably, above) but not processed: a warning, as storescp would store it.
            return status.WARNING_KEPT, f"kept, not processed: {exc.detail}"[:64]
        return code, exc.detail[:64]
    except errors.Unavailable as exc:
        log.warning("C-STORE from %s refused, out of resources: %s", peer, exc)
        return status.OUT_OF_RESOURCES, "temporarily unable to store; retry later"
    except Exception:  # noqa: BLE001 - never a false Success
        log.exception("C-STORE from %s failed", peer)
        return status.OUT_OF_RESOURCES, "internal error; retry later"
    return status.SUCCESS, ""


def called_ae_of(event: Event) -> str:
    """The AE title the sender called (the A-ASSOCIATE-RQ's), not the title the SCP runs as."""
    primitive = getattr(event.assoc.requestor, "primitive", None)
    return str(getattr(primitive, "called_ae_title", "") or "").strip()


def handle_commitment_report(event: Event) -> tuple[int, Dataset | None]:
    """N-EVENT-REPORT on pynetdicom's engine: see commitment_answer."""
    return commitment_answer(event.event_information, peer=peer_of(event)), None


def commitment_answer(info: Dataset, *, peer: str) -> int:
    """N-EVENT-REPORT of Storage Commitment Push Model (PS3.4 J.3.3): the PACS's answer to a
    commitment fhirai asked for. Success when recorded; 0112 (no such SOP instance) for a
    transaction fhirai never started; 0110 when it cannot be recorded now (the PACS retries)."""
    transaction_uid = str(info.get("TransactionUID", "") or "")
    committed = [str(i.get("ReferencedSOPInstanceUID", "")) for i in info.get("ReferencedSOPSequence", [])]
    failed = [
        (str(i.get("ReferencedSOPInstanceUID", "")), int(i.get("FailureReason", 0x0110) or 0x0110))
        for i in info.get("FailedSOPSequence", [])
    ]
    try:
        known = commitment_report(transaction_uid, committed=committed, failed=failed, peer=peer)
    except Exception:  # noqa: BLE001 - the PACS is told to try again rather than that all is well
        log.exception("storage commitment report from %s could not be recorded", peer)
        return status.PROCESSING_FAILURE
    return status.SUCCESS if known else status.NO_SUCH_SOP_INSTANCE


def _failure(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment (0000,0902), at most 64 characters (LO)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds
