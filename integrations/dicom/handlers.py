"""pynetdicom event handlers: event in, one domain call, status out."""

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


def called_ae_of(event: Event) -> str:
    """The AE title the sender called (the A-ASSOCIATE-RQ's), not the title the SCP runs as."""
    primitive = getattr(event.assoc.requestor, "primitive", None)
    return str(getattr(primitive, "called_ae_title", "") or "").strip()


def handle_echo(event: Event) -> int:
    """C-ECHO (PS3.7 9.1.5): Success."""
    return status.SUCCESS


def handle_store(event: Event) -> Dataset | int:
    """C-STORE. Success means the bytes are committed (DESIGN invariant 1)."""
    raw = event.encoded_dataset()
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    # Sent to the priors AE title (the move destination of a prior fetch), or to fhirai's own.
    receive = prior_instance_receive if called_ae_of(event) == settings.FHIRAI_PRIORS_AE else instance_receive
    try:
        receive(raw=raw, calling_ae=calling_ae, transfer_syntax_uid=str(event.context.transfer_syntax))
    except errors.InvalidInput as exc:
        code = status.for_invalid(exc.code)
        try:
            input_reject(protocol="dicom", raw=raw, peer=peer_of(event), code=exc.code, detail=exc.detail)
        except Exception:  # noqa: BLE001 - the refusal must still go out
            log.exception("could not keep rejected DICOM input from %s", peer_of(event))
            return _failure(status.OUT_OF_RESOURCES, "cannot keep it now; retry later")
        if exc.code in status.KEPT_CODES:
            # Kept (durably, above) but not processed: a warning, as storescp would store it.
            return _failure(status.WARNING_KEPT, f"kept, not processed: {exc.detail}")
        return _failure(code, exc.detail)
    except errors.Unavailable as exc:
        log.warning("C-STORE from %s refused, out of resources: %s", peer_of(event), exc)
        return _failure(status.OUT_OF_RESOURCES, "temporarily unable to store; retry later")
    except Exception:  # noqa: BLE001 - never a false Success
        log.exception("C-STORE from %s failed", peer_of(event))
        return _failure(status.OUT_OF_RESOURCES, "internal error; retry later")
    return status.SUCCESS


def handle_commitment_report(event: Event) -> tuple[int, Dataset | None]:
    """N-EVENT-REPORT of Storage Commitment Push Model (PS3.4 J.3.3): the PACS's answer to a
    commitment fhirai asked for. Success when recorded; 0112 (no such SOP instance) for a
    transaction fhirai never started; 0110 when it cannot be recorded now (the PACS retries)."""
    info = event.event_information
    transaction_uid = str(info.get("TransactionUID", "") or "")
    committed = [str(i.get("ReferencedSOPInstanceUID", "")) for i in info.get("ReferencedSOPSequence", [])]
    failed = [
        (str(i.get("ReferencedSOPInstanceUID", "")), int(i.get("FailureReason", 0x0110) or 0x0110))
        for i in info.get("FailedSOPSequence", [])
    ]
    try:
        known = commitment_report(transaction_uid, committed=committed, failed=failed, peer=peer_of(event))
    except Exception:  # noqa: BLE001 - the PACS is told to try again rather than that all is well
        log.exception("storage commitment report from %s could not be recorded", peer_of(event))
        return status.PROCESSING_FAILURE, None
    return (status.SUCCESS if known else status.NO_SUCH_SOP_INSTANCE), None


def _failure(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment (0000,0902), at most 64 characters (LO)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds
