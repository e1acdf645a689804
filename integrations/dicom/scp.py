"""The DICOM SCP: an AE that accepts C-ECHO and C-STORE for every storage SOP class in every
transfer syntax pynetdicom knows (bytes are stored as received; no decoding on receive)."""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt, sop_class
from pynetdicom import association as pynetdicom_association
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from fhirai.ingest.receive import input_reject
from fhirai.ingest.sources import Refusal, dicom_association_check, dicom_settings_rules
from fhirai.tls import server_context
from integrations.dicom.acceptor import Acceptor, Slots, reject_reason, tls_accept
from integrations.dicom.handlers import (
    commitment_answer,
    handle_commitment_report,
    handle_echo,
    handle_store,
    store_answer,
)

log = logging.getLogger(__name__)
# A refused association is kept under fhirai.ingest.sources' codes, or, when every association
# slot (FHIRAI_DICOM_MAX_ASSOCIATIONS) was taken, this one.
TOO_MANY_ASSOCIATIONS = "too-many-associations"


def _service_class(uid: str) -> type[ServiceClass]:
    """pynetdicom picks the service of a request by the command's Affected SOP Class UID; a sender
    that puts something unknown there (seen from dcmtk with some RLE files) had its association
    aborted, though the presentation context, negotiated for a storage SOP class, was accepted.
    dcmtk's storescp stores such an instance, and so does fhirai: an unknown class is storage."""
    found = _uid_to_service_class(uid)
    return StorageServiceClass if found is ServiceClass else found


_uid_to_service_class = pynetdicom_association.uid_to_service_class
pynetdicom_association.uid_to_service_class = _service_class


class NoDelayServer(ThreadedAssociationServer):
    """pynetdicom leaves Nagle's algorithm on, which stalls each small DIMSE response ~40 ms on
    loopback and caps a sender near 20 images/s: set TCP_NODELAY on every accepted socket.

    With TLS, pynetdicom would do the handshake in its accept loop, with no timeout: one client
    that connects and stays silent would stop the SCP accepting anyone. Here the handshake runs in
    the association's own thread, bounded by the ACSE timeout, and a failure is logged."""

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
        sock, address = self.socket.accept()  # not super(): that would wrap (and handshake) here
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            tls = tls_accept(request, self.ssl_context, client_address, float(self.ae.acse_timeout or 30))
            if tls is None:
                return
            tls.settimeout(None)  # as pynetdicom has its accepted sockets: blocking, it polls them
            request = tls
        super().finish_request(request, client_address)


def _association_check(calling_ae: str, called_ae: str, address: str) -> Refusal | None:
    return dicom_association_check(calling_ae=calling_ae, called_ae=called_ae, address=address)


def rejection_keep(calling_ae: str, address: str, refusal: Refusal | None) -> None:
    """Keep a refused association visible (console: Rejected at the door), on either engine: why
    (fhirai.ingest.sources' codes), or, with no refusal, that every association slot was taken."""
    if refusal is None:
        refusal = Refusal(
            TOO_MANY_ASSOCIATIONS,
            f"association from calling AE {calling_ae!r} refused: FHIRAI_DICOM_MAX_ASSOCIATIONS reached",
        )
    try:
        input_reject(
            protocol="dicom",
            raw=b"",
            peer=f"{calling_ae}@{address}",
            code=refusal.code,
            detail=refusal.detail,
        )
    except Exception:  # noqa: BLE001 - the refusal stands even when it cannot be recorded
        log.warning("a refused association could not be recorded", exc_info=True)


def handle_requested(event: evt.Event) -> None:
    """pynetdicom engine: decide the association as fhirai's acceptor does, per association (the
    settings plus the console's rules, so a change needs no restart). Rejecting from EVT_REQUESTED
    is pynetdicom's own provision; its require_calling_aet cannot see the peer's address, and its
    require_called_aet knows a single title."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
    address = str(assoc.requestor.address)
    try:
        refusal = _association_check(calling, called, address)
    except Exception:  # noqa: BLE001 - pynetdicom would log it and go on to accept: fail closed
        log.exception("DICOM association from %s@%s aborted: it could not be checked", calling, address)
        assoc.abort()
        return
    if refusal is None:
        return
    assoc.acse.send_reject(*reject_reason(refusal))
    log.info("DICOM association from %s@%s rejected", calling, address)
    rejection_keep(calling, address, refusal)
    assoc.kill()  # as pynetdicom does after its own A-ASSOCIATE-RJ: stops the association's DUL


def handle_rejected(event: evt.Event) -> None:
    """pynetdicom engine: an association pynetdicom itself refused (no slot left) is kept too."""
    rejection_keep(str(event.assoc.requestor.ae_title).strip(), str(event.assoc.requestor.address), None)


# Retired image and SR storage SOP classes (PS3.6 Table A-1) that older modalities still send and
# dcmtk's storescp accepts (the holdout run found retired Ultrasound Image Storage in pydicom-data);
# pynetdicom's AllStoragePresentationContexts leaves them out.
RETIRED_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.8",  # Standalone Overlay Storage
    "1.2.840.10008.5.1.4.1.1.9",  # Standalone Curve Storage
    "1.2.840.10008.5.1.4.1.1.9.1",  # Waveform Storage - Trial
    "1.2.840.10008.5.1.4.1.1.10",  # Standalone Modality LUT Storage
    "1.2.840.10008.5.1.4.1.1.11",  # Standalone VOI LUT Storage
    "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1",  # VL Image Storage - Trial
    "1.2.840.10008.5.1.4.1.1.77.2",  # VL Multi-frame Image Storage - Trial
    "1.2.840.10008.5.1.4.1.1.88.1",  # Text SR Storage - Trial
    "1.2.840.10008.5.1.4.1.1.88.2",  # Audio SR Storage - Trial
    "1.2.840.10008.5.1.4.1.1.88.3",  # Detail SR Storage - Trial
    "1.2.840.10008.5.1.4.1.1.88.4",  # Comprehensive SR Storage - Trial
    "1.2.840.10008.5.1.4.1.1.129",  # Standalone PET Curve Storage
)


def _all_storage() -> list[str]:
    return [str(c.abstract_syntax) for c in AllStoragePresentationContexts] + list(RETIRED_STORAGE)


def sop_class_uid(name: str) -> str:
    """A storage SOP class by UID or pynetdicom keyword; ImproperlyConfigured when it is neither."""
    storage = set(_all_storage())
    if name in storage:
        return name
    uid = getattr(sop_class, name, None)
    if uid is not None and str(uid) in storage:
        return str(uid)
    raise ImproperlyConfigured(f"{name!r} is not a storage SOP class UID or keyword (e.g. CTImageStorage)")


def storage_sop_classes() -> list[str]:
    """The storage SOP classes the SCP accepts: FHIRAI_DICOM_ACCEPT_SOP_CLASSES (all when empty)
    less FHIRAI_DICOM_REJECT_SOP_CLASSES, in pynetdicom's order, then the retired ones."""
    accept = {sop_class_uid(n) for n in settings.FHIRAI_DICOM_ACCEPT_SOP_CLASSES}
    reject = {sop_class_uid(n) for n in settings.FHIRAI_DICOM_REJECT_SOP_CLASSES}
    return [uid for uid in _all_storage() if (not accept or uid in accept) and uid not in reject]


def application_entity() -> AE:
    """fhirai's AE: storage SCP for the accepted storage SOP classes in every transfer syntax
    (stored as sent, never transcoded), plus Verification. A SOP class left out is refused at
    association negotiation (abstract syntax not supported), before any data is sent."""
    dicom_settings_rules()  # a malformed FHIRAI_DICOM_ALLOW stops the SCP here, as SOP classes do
    ae = AE(ae_title=settings.FHIRAI_DICOM_AE)
    ae.maximum_associations = settings.FHIRAI_DICOM_MAX_ASSOCIATIONS
    # The largest PDU a sender may send us: pynetdicom's 16 KB default cuts a 512 KB CT slice into
    # 33 PDUs, each a hand-off between pynetdicom's reader and association threads.
    ae.maximum_pdu_size = settings.FHIRAI_DICOM_MAX_PDU
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.add_supported_context(Verification)
    # Storage commitment reports (N-EVENT-REPORT) from a PACS fhirai asked to commit its results:
    # the PACS opens the association and acts as the SCP of the SOP class (role selection).
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    for uid in storage_sop_classes():
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    return ae


def _store(
    calling_ae: str, called_ae: str, peer: str, transfer_syntax_uid: str, raw: bytes
) -> tuple[int, str]:
    return store_answer(
        raw=raw,
        calling_ae=calling_ae,
        called_ae=called_ae,
        peer=peer,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def _event_report(peer: str, info: Dataset) -> int:
    return commitment_answer(info, peer=peer)


def tls_context() -> ssl.SSLContext | None:
    """The SCP's TLS context from FHIRAI_DICOM_TLS_CERT/_KEY/_CA (fhirai.tls: the BCP 195 profile;
    with the CA, mutual TLS); None when no certificate is configured."""
    if not settings.FHIRAI_DICOM_TLS_CERT:
        return None
    return server_context(
        settings.FHIRAI_DICOM_TLS_CERT, settings.FHIRAI_DICOM_TLS_KEY, settings.FHIRAI_DICOM_TLS_CA
    )


def servers_start() -> list[ThreadedAssociationServer | Acceptor]:
    """The listeners the settings ask for, sharing one AE (and so one association limit): plain
    DICOM on FHIRAI_DICOM_PORT; with a TLS certificate, TLS instead on that port, or, with
    FHIRAI_DICOM_TLS_PORT, TLS on that port beside the plain one."""
    host = settings.FHIRAI_BIND_ADDRESS
    context = tls_context()
    ae = application_entity()
    slots = Slots(settings.FHIRAI_DICOM_MAX_ASSOCIATIONS)
    if context is None or settings.FHIRAI_DICOM_TLS_PORT:
        listeners = [_listener_start(ae, (host, settings.FHIRAI_DICOM_PORT), None, slots)]
        if context is not None:
            listeners.append(_listener_start(ae, (host, settings.FHIRAI_DICOM_TLS_PORT), context, slots))
        return listeners
    return [_listener_start(ae, (host, settings.FHIRAI_DICOM_PORT), context, slots)]


def server_start(
    address: tuple[str, int] | None = None, *, ssl_context: ssl.SSLContext | None = None
) -> ThreadedAssociationServer | Acceptor:
    """One listener on `address` (default FHIRAI_BIND_ADDRESS:FHIRAI_DICOM_PORT), over TLS with
    `ssl_context`; .shutdown() stops accepting and closes the socket."""
    ae = application_entity()
    address = address or (settings.FHIRAI_BIND_ADDRESS, settings.FHIRAI_DICOM_PORT)
    return _listener_start(ae, address, ssl_context, Slots(settings.FHIRAI_DICOM_MAX_ASSOCIATIONS))


def _listener_start(
    ae: AE, address: tuple[str, int], ssl_context: ssl.SSLContext | None, slots: Slots
) -> ThreadedAssociationServer | Acceptor:
    """Start serving in background threads.
    FHIRAI_DICOM_ENGINE picks the upper layer: `fhirai` (integrations.dicom.acceptor, the
    default) or `pynetdicom` (pynetdicom's own acceptor); both negotiate from the same AE."""
    transport = " over TLS" if ssl_context is not None else ""
    # The SCP parses headers only to index them. pydicom validates every value it converts
    # (WARN by default): about 1 ms per image here, and its warnings would quote header values
    # (PHI) into the log. Validation on read changes nothing else, so it is off in this process.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # Each C-STORE writes its blob in a helper thread (syscalls, mostly without the GIL) while the
    # association's thread parses the header (Python, with the GIL). With the default 5 ms switch
    # interval the writer waits for the parse at each step between its syscalls, and the two run
    # one after the other; 0.5 ms lets them overlap.
    sys.setswitchinterval(0.0005)
    if settings.FHIRAI_DICOM_ENGINE == "fhirai":
        acceptor = Acceptor(
            address,
            ae,
            store=_store,
            rejected=rejection_keep,
            check=_association_check,
            event_report=_event_report,
            slots=slots,
            ssl_context=ssl_context,
        )
        threading.Thread(target=acceptor.serve_forever, name="dicom-scp", daemon=True).start()
        log.info(
            "DICOM SCP %s listening on %s:%s%s (fhirai engine)", settings.FHIRAI_DICOM_AE, *address, transport
        )
        return acceptor
    handlers = [
        (evt.EVT_REQUESTED, handle_requested),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store),
        (evt.EVT_N_EVENT_REPORT, handle_commitment_report),
        (evt.EVT_REJECTED, handle_rejected),
    ]
    server = ae.make_server(
        address, evt_handlers=handlers, server_class=NoDelayServer, ssl_context=ssl_context
    )
    ae._servers.append(server)  # as AE.start_server() does; server.shutdown() takes it off again

    threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True).start()
    log.info(
        "DICOM SCP %s listening on %s:%s%s (pynetdicom engine)", settings.FHIRAI_DICOM_AE, *address, transport
    )
    return server
