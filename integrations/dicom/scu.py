"""fhirai as a Storage SCU: the results (DICOM SR) sent by C-STORE to a PACS, proposing only the
presentation contexts the objects need (their SOP class in their own transfer syntax, and
Explicit/Implicit VR Little Endian as fallbacks), one association per delivery; and C-ECHO for
the console's Test button. The domain decides what to send (fhirai.results.writeback); this
module only speaks DIMSE."""

from __future__ import annotations

import logging
import ssl
from io import BytesIO

from django.conf import settings
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    Verification,
)

from fhirai.errors import Unavailable
from fhirai.results.writeback import Outcome
from fhirai.tls import client_context

log = logging.getLogger(__name__)
SUCCESS = 0x0000
WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)  # stored, with a warning (PS3.4 B.2.3)


def pacs_tls_args(name: str, host: str, port: int) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's tls_args for a PACS listed in FHIRAI_PACS_TLS (by destination name, HOST:PORT,
    or `*`): the fhirai.tls client profile, the PACS's certificate verified against
    FHIRAI_PACS_TLS_CA (else the system's trust store) and its host name, fhirai's own certificate
    presented when FHIRAI_PACS_TLS_CERT is set. None: plain DICOM."""
    listed = settings.FHIRAI_PACS_TLS
    name = name.removeprefix("dicom:")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not listed or not ("*" in listed or name in listed or address in listed):
        return None
    context = client_context(
        settings.FHIRAI_PACS_TLS_CA, settings.FHIRAI_PACS_TLS_CERT, settings.FHIRAI_PACS_TLS_KEY
    )
    return context, host


def _ae() -> AE:
    ae = AE(ae_title=settings.FHIRAI_DICOM_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.FHIRAI_DICOM_TIMEOUT
    ae.connection_timeout = min(settings.FHIRAI_DICOM_TIMEOUT, 10.0)
    return ae


def objects_send(
    peer: str, aet: str, host: str, port: int, objects: list[bytes], *, commitment_uid: str = ""
) -> Outcome:
    """C-STORE each object (Part 10 bytes) to AE `aet` at host:port over one association.
    Delivered when every one got Success or a warning; refused when the PACS answered a failure
    status or rejected the association permanently; Unavailable when it cannot be reached now.
    With `commitment_uid`, then N-ACTION Request Storage Commitment (PS3.4 J.3.2) for them on the
    same association: the PACS's N-EVENT-REPORT comes later to fhirai's SCP."""
    datasets = [dcmread(BytesIO(raw)) for raw in objects]
    ae = _ae()
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        own = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets if str(ds.SOPClassUID) == sop_class}
        ae.add_requested_context(sop_class, sorted(own | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
    if commitment_uid:
        ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = pacs_tls_args(peer, host, port)
    try:
        assoc = ae.associate(host, port, ae_title=aet, tls_args=tls_args)
    except OSError as exc:
        raise Unavailable(f"PACS {peer} unreachable: {type(exc).__name__}") from exc
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result", None)
        text = (
            f"association rejected by {aet} (result {result}, reason {getattr(primitive, 'diagnostic', '?')})"
        )
        if result == 0x01:  # rejected-permanent: it will not change by waiting
            return Outcome(delivered=False, status=None, reply=text, summary=text)
        raise Unavailable(f"PACS {peer}: {text}")
    if not assoc.is_established:
        over = " over TLS (see the log for the handshake)" if tls_args else ""
        raise Unavailable(f"PACS {peer} ({aet}@{host}:{port}) did not accept an association{over}")
    answers = []
    refused = ""
    try:
        for ds in datasets:
            reply = assoc.send_c_store(ds)
            code = int(getattr(reply, "Status", -1)) if reply else -1
            if code == -1:
                raise Unavailable(f"PACS {peer} gave no C-STORE response (association lost)")
            answers.append((str(ds.SOPInstanceUID), code, str(getattr(reply, "ErrorComment", "") or "")))
        stored = all(code == SUCCESS or code in WARNINGS for _, code, _ in answers)
        if commitment_uid and stored:
            refused = _commitment_request(assoc, commitment_uid, datasets)
    finally:
        if assoc.is_established:
            assoc.release()
    failed = [
        (uid, code, comment) for uid, code, comment in answers if code != SUCCESS and code not in WARNINGS
    ]
    lines = [f"{uid}: {code:04X}{' ' + comment if comment else ''}" for uid, code, comment in answers]
    summary = f"C-STORE {len(answers)} object(s) to {aet}: " + (
        "all stored" if not failed else f"{len(failed)} refused, status {failed[0][1]:04X}"
    )
    if commitment_uid and not failed:
        summary += "; storage commitment " + (f"not accepted ({refused})" if refused else "requested")
    return Outcome(
        delivered=not failed, status=None, reply="\n".join(lines), summary=summary, commitment_refused=refused
    )


def _commitment_request(assoc: object, transaction_uid: str, datasets: list[Dataset]) -> str:
    """N-ACTION (Action Type 1) with the Transaction UID and each object's SOP class and instance;
    "" when the PACS accepted the request, else why not."""
    context = [
        c
        for c in assoc.accepted_contexts
        if str(c.abstract_syntax) == StorageCommitmentPushModel  # type: ignore[attr-defined]
    ]
    if not context:
        return "the PACS does not offer Storage Commitment Push Model"
    request = Dataset()
    request.TransactionUID = transaction_uid
    items = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        items.append(item)
    request.ReferencedSOPSequence = items
    status, _reply = assoc.send_n_action(  # type: ignore[attr-defined]
        request, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
    )
    code = int(getattr(status, "Status", -1)) if status else -1
    if code == SUCCESS:
        return ""
    return "no N-ACTION response" if code == -1 else f"N-ACTION status {code:04X}"


def echo(peer: str, aet: str, host: str, port: int) -> str:
    """C-ECHO, for the console's Test button; Unavailable with the reason when it does not answer."""
    ae = _ae()
    ae.add_requested_context(Verification)
    tls_args = pacs_tls_args(peer, host, port)
    try:
        assoc = ae.associate(host, port, ae_title=aet, tls_args=tls_args)
    except OSError as exc:
        raise Unavailable(f"dicom:{peer}: cannot connect to {host}:{port}: {type(exc).__name__}") from exc
    if not assoc.is_established:
        over = " over TLS" if tls_args else ""
        raise Unavailable(f"dicom:{peer}: {aet}@{host}:{port} did not accept an association{over}")
    try:
        reply = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(reply, "Status", -1)) if reply else -1
    if code != SUCCESS:
        raise Unavailable(f"dicom:{peer}: C-ECHO answered {code:04X}")
    return f"dicom:{peer}: {aet}@{host}:{port} answers C-ECHO{' over TLS' if tls_args else ''}"
