"""fhirai's own DICOM upper-layer acceptor for the Storage SCP and Verification SCP roles (PS3.8,
PS3.7): one thread per association on a blocking socket, P-DATA reassembled by hand.

Why not pynetdicom's acceptor: each association there is two threads (the DUL reading PDUs and
the association reactor) handing every PDU over through queues polled every millisecond, with
every PDU decoded into Python objects; on a 2-core host that costs more per image than storing
it, and caps any SCP built on it below the throughput of Orthanc (bench/README.md, issue 9).

What stays pynetdicom's: association negotiation (its PDU classes and its presentation-context
negotiation, with the same supported contexts as integrations.dicom.scp.application_entity), so
what is accepted, rejected and answered at association time is the same on both engines; the
per-message path (P-DATA-TF, C-STORE, C-ECHO, A-RELEASE, A-ABORT) is integrations.dicom.pdu."""

from __future__ import annotations

import logging
import multiprocessing
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from django.db import close_old_connections, connections
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC as AssociateAcPdu
from pynetdicom.pdu import A_ASSOCIATE_RJ as AssociateRjPdu
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor

from fhirai.ingest.sources import CALLED_AE_NOT_RECOGNIZED, Refusal
from fhirai.tls import handshake_failure
from integrations.dicom import pdu

log = logging.getLogger(__name__)

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
# The largest A-ASSOCIATE-RQ read (a request proposing all ~150 storage SOP classes in a dozen
# transfer syntaxes is ~150 KB); bigger is refused rather than buffered.
MAX_ASSOCIATE_RQ = 4 * 1024 * 1024

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4; the same as pynetdicom sends.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE title not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called AE title not recognized
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service-provider (presentation), local limit

# Store handler: (calling AE, called AE, peer, transfer syntax UID, Part 10 bytes) -> (status, error comment)
StoreFn = Callable[[str, str, str, str, bytes], tuple[int, str]]
# N-EVENT-REPORT handler (storage commitment reports): (peer, event information) -> status
EventReportFn = Callable[[str, Dataset], int]
# Association check: (calling AE, called AE, peer address) -> None to go on, or why not
CheckFn = Callable[[str, str, str], Refusal | None]
# Rejection handler: (calling AE, peer address, why; None: no slot left) -> None, called after the
# A-ASSOCIATE-RJ is sent
RejectedFn = Callable[[str, str, Refusal | None], None]


def reject_reason(refusal: Refusal) -> tuple[int, int, int]:
    """The A-ASSOCIATE-RJ (result, source, diagnostic) for a refusal: called AE title not
    recognized, or calling AE title not recognized for both an unknown title and a known one from
    the wrong address (the sender learns no more than that its title is not accepted here)."""
    return REJECT_CALLED_AE if refusal.code == CALLED_AE_NOT_RECOGNIZED else REJECT_CALLING_AE


class Slots:
    """The association slots of one listening port (FHIRAI_DICOM_MAX_ASSOCIATIONS): a connection
    takes one when accepted and gives it back when closed; one that finds none left is answered
    A-ASSOCIATE-RJ (as pynetdicom counts its active acceptor associations). A shared-memory
    counter, so acceptor processes forked from one parent could share the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._taken = multiprocessing.Value("i", 0)

    def take(self) -> bool:
        with self._taken.get_lock():
            if self._taken.value >= self.limit:
                return False
            self._taken.value += 1
            return True

    def give(self) -> None:
        with self._taken.get_lock():
            self._taken.value -= 1


class Closed(Exception):
    """The peer closed the connection, or it timed out."""


def tls_accept(
    conn: socket.socket, context: ssl.SSLContext, address: tuple[str, int], timeout: float
) -> ssl.SSLSocket | None:
    """The server side of the TLS handshake (PS3.15 B.9) on an accepted connection, in that
    connection's own thread, bounded like ARTIM: a peer that does not finish within `timeout`, or
    offers no acceptable version, cipher or certificate, is logged (its address and OpenSSL's
    reason only) and the socket closed; None then. Other associations are not affected."""
    conn.settimeout(timeout)
    tls: ssl.SSLSocket | None = None
    try:
        tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
    except (OSError, ValueError) as exc:
        log.warning(
            "DICOM TLS handshake from %s:%s failed: %s", address[0], address[1], handshake_failure(exc)
        )
        (tls or conn).close()  # once wrapped, the TLS socket holds the descriptor
        return None
    return tls


@dataclass(eq=False)
class Association:
    """One accepted association's state (PS3.8 9.1: the acceptor's side of the state machine)."""

    sock: socket.socket
    address: tuple[str, int]
    calling_ae: str = ""
    called_ae: str = ""
    idle: bool = True  # waiting for A-ASSOCIATE-RQ or a message's first PDU: safe to close on shutdown
    peer_max_pdu: int = 0
    # accepted presentation context ID -> (abstract syntax, transfer syntax)
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def peer(self) -> str:
        return f"{self.calling_ae}@{self.address[0]}:{self.address[1]}"


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            raise Closed("connection closed by the peer")
        got += n
    return buf


class Acceptor:
    """A listening socket and one thread per association. serve_forever() accepts until
    shutdown(); shutdown() stops accepting, lets every association finish the message it is in
    (a C-STORE's Success goes out only after its commit) and closes them. With `ssl_context`, each
    connection's TLS handshake (tls_accept) comes first, in its own thread, before it takes a slot."""

    def __init__(
        self,
        address: tuple[str, int],
        ae: AE,
        *,
        store: StoreFn,
        rejected: RejectedFn,
        check: CheckFn,
        slots: Slots | None = None,
        event_report: EventReportFn | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ae = ae
        self.ssl_context = ssl_context
        self.store = store
        self.event_report = event_report
        self.rejected = rejected
        self.check = check
        self.max_pdu = int(ae.maximum_pdu_size or 0)
        self.slots = slots or Slots(int(ae.maximum_associations))
        self.acse_timeout = float(ae.acse_timeout or 30)
        self.network_timeout = float(ae.network_timeout or 60)
        self.supported = ae.supported_contexts
        self.implementation_uid = str(ae.implementation_class_uid)
        self.implementation_version = ae.implementation_version_name
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(64)
        self.server_address = self.sock.getsockname()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: set[threading.Thread] = set()
        self._associations: set[Association] = set()

    # --- the listener ---------------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.2) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                try:
                    if not selector.select(poll_interval):
                        continue
                except (OSError, ValueError):  # the socket was closed by shutdown()
                    if self._stop.is_set():
                        return
                    raise
                try:
                    conn, address = self.sock.accept()
                except OSError:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                thread = threading.Thread(
                    target=self._run, args=(conn, address), name=f"dicom-assoc-{address[1]}", daemon=True
                )
                with self._lock:
                    self._active.add(thread)
                thread.start()

    def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting; associations stop after the message in progress (at most `grace` s)."""
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            threads = list(self._active)
            idle = [a.sock for a in self._associations if a.idle]
        for conn in idle:  # wakes a thread waiting for its next message; one mid-message finishes it
            try:
                # the TCP socket's own shutdown: SSLSocket.shutdown() would also drop its TLS state
                # under the thread reading from it
                socket.socket.shutdown(conn, socket.SHUT_RD)
            except OSError:
                pass
        for thread in threads:
            thread.join(grace)

    server_close = shutdown

    # --- one association ------------------------------------------------------------------------
    def _run(self, conn: socket.socket, address: tuple[str, int]) -> None:
        if self.ssl_context is not None:
            # Before a slot is taken: a connection is an association only once TLS is up.
            tls = tls_accept(conn, self.ssl_context, address, self.acse_timeout)
            if tls is None:
                with self._lock:
                    self._active.discard(threading.current_thread())
                return
            conn = tls
        assoc = Association(conn, address)
        with self._lock:
            self._associations.add(assoc)
        has_slot = self.slots.take()
        try:
            close_old_connections()
            if self._associate(assoc, has_slot):
                self._serve(assoc)
        except Closed:
            pass
        except pdu.ProtocolError as exc:
            log.info("DICOM association from %s aborted: %s", assoc.peer, exc)
            self._send_quietly(conn, pdu.abort(pdu.ABORT_SOURCE_PROVIDER, exc.reason))
        except OSError as exc:
            log.info("DICOM association from %s ended: %s", assoc.peer, exc)
        except Exception:  # noqa: BLE001 - one association's failure must not stop the server
            log.exception("DICOM association from %s failed", assoc.peer)
            self._send_quietly(conn, pdu.abort())
        finally:
            try:
                _close(conn)
            finally:
                if has_slot:
                    self.slots.give()
                with self._lock:
                    self._active.discard(threading.current_thread())
                    self._associations.discard(assoc)
                connections.close_all()

    @staticmethod
    def _send_quietly(conn: socket.socket, data: bytes) -> None:
        try:
            conn.sendall(data)
        except OSError:
            pass

    def _read_pdu_header(self, sock: socket.socket) -> tuple[int, int]:
        return pdu.header_decode(bytes(_recv_exact(sock, 6)))

    def _associate(self, assoc: Association, has_slot: bool) -> bool:
        """ARTIM (PS3.8 9.1.5): an A-ASSOCIATE-RQ within the ACSE timeout, else the connection is
        closed. Answers AC or RJ as pynetdicom's acceptor does; True when accepted."""
        sock = assoc.sock
        sock.settimeout(self.acse_timeout)
        try:
            pdu_type, length = self._read_pdu_header(sock)
        except TimeoutError:
            raise Closed("no A-ASSOCIATE-RQ within the ACSE timeout") from None
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolError(
                f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ", pdu.ABORT_REASON_UNEXPECTED_PDU
            )
        if length > MAX_ASSOCIATE_RQ:
            raise pdu.ProtocolError("A-ASSOCIATE-RQ too large")
        raw = pdu.pdu_header(pdu_type, length) + bytes(_recv_exact(sock, length))
        request = AssociateRqPdu()
        try:
            request.decode(raw)
            primitive = request.to_primitive()
        except Exception as exc:  # noqa: BLE001 - any malformed request is a protocol error
            raise pdu.ProtocolError(f"malformed A-ASSOCIATE-RQ: {type(exc).__name__}") from None
        assoc.calling_ae = str(primitive.calling_ae_title).strip()
        assoc.called_ae = str(primitive.called_ae_title).strip()
        assoc.peer_max_pdu = int(primitive.maximum_length_received or 0)

        # Out of slots, the check (a database read) is not worth making: the answer is transient.
        refusal = self.check(assoc.calling_ae, assoc.called_ae, assoc.address[0]) if has_slot else None
        if refusal is not None or not has_slot:
            reject = reject_reason(refusal) if refusal is not None else REJECT_LOCAL_LIMIT
            sock.sendall(_reject_pdu(primitive, *reject))
            log.info("DICOM association from %s@%s rejected", assoc.calling_ae, assoc.address[0])
            self.rejected(assoc.calling_ae, assoc.address[0], refusal)
            return False

        roles = {}
        for item in primitive.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
        result, role_items = negotiate_as_acceptor(
            primitive.presentation_context_definition_list, self.supported, roles
        )
        accepted = [cx for cx in result if cx.result == 0x00]
        assoc.contexts = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in accepted
        }
        sock.sendall(
            self._accept_pdu(primitive, accepted + [cx for cx in result if cx.result != 0x00], role_items)
        )
        return True

    def _accept_pdu(self, request: A_ASSOCIATE, contexts: list[Any], role_items: list[Any]) -> bytes:
        """A-ASSOCIATE-AC (PS3.8 9.3.3) with pynetdicom's user information: Maximum Length,
        Implementation Class UID and Version Name, then any SCP/SCU Role Selection answers."""
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT_NAME
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result = 0x00
        primitive.result_source = 0x01
        primitive.presentation_context_definition_results_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = self.implementation_uid
        info: list[Any] = [max_length, implementation]
        if self.implementation_version:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = self.implementation_version
            info.append(version)
        primitive.user_information = info + list(role_items)
        ac = AssociateAcPdu()
        ac.from_primitive(primitive)
        return ac.encode()

    def _serve(self, assoc: Association) -> None:
        """The Data Transfer state (PS3.8 Sta6) until A-RELEASE-RQ, A-ABORT, a protocol error or
        the idle timeout. Command and data set fragments are reassembled per PS3.8 E.2."""
        sock = assoc.sock
        sock.settimeout(self.network_timeout)
        command_parts: list[bytes | memoryview] = []
        dataset_parts: list[bytes | memoryview] = []
        command: pdu.Command | None = None
        context_id = 0
        max_pdu = self.max_pdu
        while True:
            # idle before the stop check: shutdown() sets the flag, then closes idle sockets
            assoc.idle = command is None and not command_parts
            if self._stop.is_set() and assoc.idle:
                return  # shutting down between messages: close
            try:
                pdu_type, length = self._read_pdu_header(sock)
            except TimeoutError:
                raise pdu.ProtocolError(
                    "idle past the network timeout", pdu.ABORT_REASON_NOT_SPECIFIED
                ) from None
            assoc.idle = False
            if pdu_type == pdu.P_DATA_TF:
                if max_pdu and length > max_pdu:
                    raise pdu.ProtocolError(f"P-DATA-TF of {length} bytes over the maximum {max_pdu}")
                body = memoryview(_recv_exact(sock, length))
                for cx, control, fragment in pdu.pdvs(body):
                    if cx not in assoc.contexts:
                        raise pdu.ProtocolError(f"presentation context {cx} was not accepted")
                    if control & 0x01:  # command fragment
                        if command is not None:
                            raise pdu.ProtocolError("command fragment while a data set is expected")
                        command_parts.append(fragment)
                        if control & 0x02:
                            command = pdu.command_decode(b"".join(command_parts))
                            command_parts = []
                            context_id = cx
                            if not command.has_dataset:
                                self._dispatch(assoc, command, context_id, None)
                                command = None
                    else:  # data set fragment
                        if command is None or cx != context_id:
                            raise pdu.ProtocolError("data set fragment without its command")
                        dataset_parts.append(fragment)
                        if control & 0x02:
                            self._dispatch(assoc, command, context_id, dataset_parts)
                            command, dataset_parts = None, []
            elif pdu_type == pdu.A_RELEASE_RQ:
                _recv_exact(sock, length)
                if command is not None or command_parts:
                    raise pdu.ProtocolError("A-RELEASE-RQ inside a message", pdu.ABORT_REASON_UNEXPECTED_PDU)
                sock.sendall(pdu.release_rp())
                return
            elif pdu_type == pdu.A_ABORT:
                _recv_exact(sock, min(length, 4))
                return  # PS3.8 AA-3: nothing is answered; a partial data set is dropped
            elif pdu_type in (pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.A_RELEASE_RP):
                raise pdu.ProtocolError(
                    f"unexpected PDU type 0x{pdu_type:02X}", pdu.ABORT_REASON_UNEXPECTED_PDU
                )
            else:
                raise pdu.ProtocolError(
                    f"unrecognized PDU type 0x{pdu_type:02X}", pdu.ABORT_REASON_UNRECOGNIZED_PDU
                )

    def _dispatch(
        self,
        assoc: Association,
        command: pdu.Command,
        context_id: int,
        dataset: list[bytes | memoryview] | None,
    ) -> None:
        """Answer one request: C-ECHO Success; C-STORE after the store function has decided. A
        C-STORE under any accepted context is stored, whatever its Affected SOP Class (as
        integrations.dicom.scp arranges for pynetdicom, and as dcmtk's storescp does)."""
        if command.field == pdu.C_ECHO_RQ:
            answer = pdu.response_encode(command, 0x0000, with_instance=False)
        elif command.field == pdu.C_STORE_RQ:
            if dataset is None:
                raise pdu.ProtocolError("C-STORE-RQ without a data set")
            transfer_syntax = assoc.contexts[context_id][1]
            raw = b"".join(
                [
                    pdu.part10_prefix(command.sop_class_uid, command.sop_instance_uid, transfer_syntax),
                    *dataset,
                ]
            )
            code, comment = self.store(assoc.calling_ae, assoc.called_ae, assoc.peer, transfer_syntax, raw)
            answer = pdu.response_encode(command, code, error_comment=comment)
        elif command.field == pdu.N_EVENT_REPORT_RQ and self.event_report is not None:
            # A storage commitment report (the only N- service accepted at negotiation).
            info = Dataset()
            if dataset is not None:
                transfer_syntax = assoc.contexts[context_id][1]
                prefix = pdu.part10_prefix(command.sop_class_uid, command.sop_instance_uid, transfer_syntax)
                try:
                    info = dcmread(BytesIO(b"".join([prefix, *dataset])))
                except Exception as exc:  # noqa: BLE001 - an unreadable report is the peer's error
                    raise pdu.ProtocolError(
                        f"unreadable N-EVENT-REPORT data set: {type(exc).__name__}"
                    ) from None
            answer = pdu.response_encode(command, self.event_report(assoc.peer, info))
        else:
            raise pdu.ProtocolError(f"DIMSE command 0x{command.field:04X} is not served here")
        assoc.sock.sendall(pdu.p_data(context_id, answer, assoc.peer_max_pdu))


def _close(conn: socket.socket) -> None:
    """Close without a TCP reset: bytes the peer sent that were not read (a PDU refused by its
    header) would make close() send RST, which can overtake our A-ABORT or A-ASSOCIATE-RJ. Over
    TLS, a close_notify alert first, so the peer sees an orderly end."""
    if isinstance(conn, ssl.SSLSocket):
        try:
            conn.settimeout(0.5)
            conn = conn.unwrap()
        except (OSError, ValueError):
            pass
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(0.5)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()


def _reject_pdu(request: A_ASSOCIATE, result: int, source: int, diagnostic: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = request.calling_ae_title
    primitive.called_ae_title = request.called_ae_title
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    rj = AssociateRjPdu()
    rj.from_primitive(primitive)
    return rj.encode()
