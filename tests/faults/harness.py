"""The fault-injection harness: the product as separate processes (HTTP, DICOM SCP, MLLP listener,
default worker with the sweep's beat, inference worker) on a PostgreSQL cluster and a redis-server
of its own; senders that behave like real peers (a modality resending until it gets Success, an
interface engine resending a message until AA, an EHR retrying a Bundle until 2xx); downstream
peers (a FHIR server and an EHR's MLLP receiver) that can be told to fail or hang; and an injector
that, at seeded random moments, kills processes, restarts the broker, stops PostgreSQL, breaks
the downstream peers and fills the blob store. What every sender was told (acknowledged or not)
is in a ledger the test checks against the database and the downstream peers afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from integrations.hl7.mllp import END, START, Framer
from tests.support.hl7msg import message, msh
from tests.support.phantom import ct_phantom
from tests.support.product import ROOT, fhir_get, free_port, http_healthy, manage, port_open, product_env

PROCESS_NAMES = ("http", "dicom_scp", "mllp", "worker-default", "worker-inference")


class Site:
    """One installation run as separate processes, each in its own process group so that a
    SIGKILL takes the process and its pool children, as an OOM kill or a crashed host would."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.http_port, self.dicom_port, self.mllp_port = free_port(), free_port(), free_port()
        self.env = product_env(
            data_dir,
            (self.http_port, self.dicom_port, self.mllp_port),
            {"FHIRAI_DEID_SECRET": "faults-secret", **env},
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.kills: Counter[str] = Counter()
        self.exits: Counter[str] = Counter()  # processes that ended on their own (and were restarted)
        self.lock = threading.Lock()
        self._supervising = threading.Event()
        self.token = ""  # the EHR's API token, issued once the site is up

    def argv(self, name: str) -> list[str]:
        py, manage = sys.executable, str(ROOT / "manage.py")
        celery = [py, "-m", "celery", "-A", "fhirai", "worker", "--without-mingle", "--without-gossip"]
        celery += ["--loglevel", "INFO"]
        if name == "worker-default":
            beat = self.data_dir / f"beat-{time.monotonic_ns()}"  # a killed beat may leave its shelf torn
            return [*celery, "-Q", "default", "-n", "default@faults", "-c", "2", "-B", "-s", str(beat)]
        if name == "worker-inference":
            return [*celery, "-Q", "inference", "-n", "inference@faults", "-P", "threads", "-c", "2"]
        return [py, manage, name]

    def manage(self, *args: str) -> None:
        manage(self.env, *args)

    def start(self, name: str) -> None:
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            self.argv(name),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with self.lock:
            self.processes[name] = process

    def start_all(self, timeout: float = 120) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in PROCESS_NAMES:
            self.start(name)
        self._supervising.set()
        threading.Thread(target=self._supervise, daemon=True).start()
        self.wait_ready(timeout)
        if not self.token:
            self.token = manage(self.env, "issue_token", "faults-ehr", "--role", "admin").strip()

    def _supervise(self) -> None:
        """What `manage.py run` (or systemd's Restart=always) does in production: a process that
        ends on its own (a worker that loses its broker mid-shutdown, say) is started again. The
        count is reported; the injector's own kills restart through kill() and start()."""
        while self._supervising.is_set():
            time.sleep(0.5)
            with self.lock:
                ended = [n for n, p in self.processes.items() if p.poll() is not None]
                for name in ended:
                    self.processes.pop(name)
                    self.exits[name] += 1
            for name in ended:
                if self._supervising.is_set():
                    self.start(name)

    def wait_ready(self, timeout: float = 120) -> None:
        """Until every listener answers (a process the last fault restarted may still be starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http_ok() and port_open(self.dicom_port) and port_open(self.mllp_port):
                return
            time.sleep(0.25)
        raise AssertionError(f"the site did not start: {self.tail('http')}")

    def kill(self, name: str) -> None:
        with self.lock:
            process = self.processes.pop(name, None)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
        self.kills[name] += 1

    def stop_all(self) -> None:
        self._supervising.clear()
        with self.lock:
            processes = dict(self.processes)
            self.processes.clear()
        for process in processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def http_ok(self) -> bool:
        return http_healthy(self.http_port)

    def get(self, path: str) -> dict[str, Any]:
        try:
            return fhir_get(self.http_port, path, timeout=20, token=self.token)
        except urllib.error.HTTPError as exc:
            body = exc.read()[:1500].decode(errors="replace")
            raise AssertionError(f"GET {path}: HTTP {exc.code} {body}\n{self.tail('http')}") from None

    def tail(self, name: str, n: int = 3000) -> str:
        try:
            return (self.data_dir / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


# --- the ledger: what each sender was told --------------------------------------------------------


@dataclass
class Ledger:
    acked_instances: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> StudyInstanceUID
    acked_messages: dict[str, str] = field(default_factory=dict)  # MSH-10 -> MRN
    acked_bundles: dict[str, str] = field(default_factory=dict)  # bundle key -> patient identifier
    answers: Counter[str] = field(default_factory=Counter)  # what the senders heard, by kind
    false_acks: list[str] = field(default_factory=list)  # a success while storage was known down
    refusals: Counter[str] = field(default_factory=Counter)  # protocol refusals seen by outage probes
    lock: threading.Lock = field(default_factory=threading.Lock)

    def heard(self, what: str) -> None:
        with self.lock:
            self.answers[what] += 1


# --- senders ---------------------------------------------------------------------------------------


def dicom_sender(
    site: Site, ledger: Ledger, studies: int, stop: threading.Event, seed: int, pace: float
) -> None:
    """A modality: sends each study's instances (one every `pace` seconds) over one association, reconnecting and resending an
    instance until it is answered Success (so an instance may arrive twice: the second Success must
    not make a second copy)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="FAULTMOD")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = None
    for index in range(studies):
        ph = ct_phantom(
            slices=8,
            size=48,
            seed=seed + index,
            identity={"PatientID": f"MRN-F{index:03d}", "AccessionNumber": f"ACC-F{index:03d}"},
        )
        for raw in ph.files:
            ds = dcmread(io.BytesIO(raw))
            while not stop.is_set():
                try:
                    if assoc is None or not assoc.is_established:
                        assoc = ae.associate("127.0.0.1", site.dicom_port, ae_title="FHIRAI")
                        if not assoc.is_established:
                            ledger.heard("dicom: association refused or failed")
                            assoc = None
                            time.sleep(0.3)
                            continue
                    status = assoc.send_c_store(ds)
                    code = getattr(status, "Status", None)
                    if code == 0x0000:
                        with ledger.lock:
                            ledger.acked_instances[ds.SOPInstanceUID] = ds.StudyInstanceUID
                        ledger.heard("dicom: success")
                        time.sleep(pace)
                        break
                    ledger.heard(f"dicom: status {code:04X}" if code is not None else "dicom: no response")
                    if code is None:
                        assoc.abort()
                        assoc = None
                except (OSError, RuntimeError, ValueError):
                    ledger.heard("dicom: connection error")
                    assoc = None
                time.sleep(0.3)
    if assoc is not None and assoc.is_established:
        assoc.release()


def _mllp_exchange(port: int, raw: bytes, timeout: float) -> str | None:
    """One message over a new connection; MSA-1 of the answer, or None for no answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(START + raw + END)
            framer = Framer(1 << 20)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    return None
                for frame in framer.feed(data):
                    text = frame.payload.decode("utf-8", "replace")
                    msa = next((s for s in text.split("\r") if s.startswith("MSA|")), "")
                    return msa.split("|")[1] if msa else "?"
    except OSError:
        return None
    return None


def hl7_sender(site: Site, ledger: Ledger, count: int, stop: threading.Event, pace: float) -> None:
    """An interface engine: each ADT^A04 is resent (same MSH-10) until it is answered AA."""
    for i in range(count):
        control, mrn = f"FLT-{i:04d}", f"MRN-H{i:04d}"
        raw = message(
            msh(control, "ADT^A04^ADT_A01"), "EVN|A04", f"PID|1||{mrn}^^^HOSP^MR||Fault^Hanna{i}||19800101|F"
        )
        while not stop.is_set():
            answer = _mllp_exchange(site.mllp_port, raw, timeout=10)
            ledger.heard(f"hl7: {answer or 'no answer'}")
            if answer in ("AA", "CA"):
                with ledger.lock:
                    ledger.acked_messages[control] = mrn
                time.sleep(pace)
                break
            time.sleep(0.3)


def bundle(i: int) -> tuple[bytes, str]:
    pid = f"FB-{i:04d}"
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:faults:patient", "value": pid}],
                    "name": [{"family": "Bundle", "given": [f"Fritz{i}"]}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier=urn:faults:patient|{pid}",
                },
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": "urn:faults:obs", "value": f"OBS-{i:04d}"}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"urn:uuid:00000000-0000-4000-8000-{i:012d}"},
                    "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
                },
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": f"identifier=urn:faults:obs|OBS-{i:04d}",
                },
            },
        ],
    }
    return json.dumps(body).encode(), pid


def http_post(
    port: int, path: str, body: bytes, timeout: float = 15, *, token: str = ""
) -> tuple[int | None, dict[str, str]]:
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, dict(exc.headers)
    except (urllib.error.URLError, OSError):
        return None, {}


def http_get(
    port: int, path: str, timeout: float = 15, *, token: str = ""
) -> tuple[int | None, dict[str, str]]:
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, dict(exc.headers)
    except (urllib.error.URLError, OSError):
        return None, {}


def fhir_sender(site: Site, ledger: Ledger, count: int, stop: threading.Event, pace: float) -> None:
    """An EHR: each transaction Bundle is retried until 2xx (its entries are conditional creates)."""
    for i in range(count):
        body, pid = bundle(i)
        while not stop.is_set():
            status, headers = http_post(site.http_port, "/fhir/", body, token=site.token)
            ledger.heard(f"http: {status or 'no answer'}")
            if status is not None and 200 <= status < 300:
                with ledger.lock:
                    ledger.acked_bundles[f"bundle-{i}"] = pid
                time.sleep(pace)
                break
            time.sleep(0.3)


# --- probes while storage is known to be down -----------------------------------------------------


def probe_listeners(site: Site, ledger: Ledger, outage: str, seq: int) -> None:
    """Send one new item of each kind; none may be acknowledged. Refusals in protocol terms are
    counted by kind; anything else (a false ACK) is recorded."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    # A listener killed by the previous fault may still be starting: a closed port is no answer
    # at all, not an answer to judge, so wait for the ports first.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        port_open(p) for p in (site.dicom_port, site.mllp_port, site.http_port)
    ):
        time.sleep(0.1)
    ph = ct_phantom(slices=1, size=32, seed=90000 + seq, identity={"PatientID": f"PROBE-{seq}"})
    ds = dcmread(io.BytesIO(ph.files[0]))
    ae = AE(ae_title="FAULTPROBE")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", site.dicom_port, ae_title="FHIRAI")
    if assoc.is_established:
        status = assoc.send_c_store(ds)
        code = getattr(status, "Status", None)
        assoc.release()
        if code == 0x0000:
            ledger.false_acks.append(f"{outage}: DICOM Success for a probe instance")
        elif code == 0xA700:
            ledger.refusals[f"{outage}: DICOM A700"] += 1
        else:
            ledger.refusals[f"{outage}: DICOM {'no response' if code is None else format(code, '04X')}"] += 1
    elif assoc.is_rejected:
        ledger.refusals[f"{outage}: DICOM association rejected"] += 1
    else:
        ledger.refusals[f"{outage}: DICOM association failed"] += 1
    if outage != "database":  # HL7 messages and FHIR resources are kept in the database, not blobs
        return
    raw = message(msh(f"PROBE-{seq}", "ADT^A04^ADT_A01"), "EVN|A04", f"PID|1||PROBE-{seq}^^^HOSP^MR||Probe^P")
    answer = _mllp_exchange(site.mllp_port, raw, timeout=15)
    if answer in ("AA", "CA"):
        ledger.false_acks.append(f"{outage}: HL7 {answer} for a probe message")
    else:
        ledger.refusals[f"{outage}: HL7 {answer or 'no answer'}"] += 1
    body = json.dumps({"resourceType": "Patient", "identifier": [{"system": "urn:probe", "value": str(seq)}]})
    status, headers = http_post(site.http_port, "/fhir/Patient", body.encode(), token=site.token)
    if status is not None and 200 <= status < 300:
        ledger.false_acks.append(f"{outage}: HTTP {status} for a probe Patient")
    elif status == 503 and "Retry-After" in headers:
        ledger.refusals[f"{outage}: HTTP 503 Retry-After"] += 1
    else:
        ledger.refusals[f"{outage}: HTTP {status}"] += 1
    # A read cannot be answered (nor its access recorded) either: 503, never a 500 page.
    status, headers = http_get(site.http_port, f"/fhir/Patient?identifier=urn:probe|{seq}", token=site.token)
    if status == 503 and "Retry-After" in headers:
        ledger.refusals[f"{outage}: FHIR read 503 Retry-After"] += 1
    else:
        ledger.false_acks.append(f"{outage}: a FHIR read answered {status} while the database was away")


# --- the injector ----------------------------------------------------------------------------------


@dataclass
class Injector:
    site: Site
    ledger: Ledger
    rng: random.Random
    pg: Any
    broker: Any
    upstream: Any  # tests.support.fhir_upstream.FhirUpstream
    peer: Any  # tests.support.mllp_peer.MllpPeer
    blob_mount: Path | None  # a small tmpfs under the blob store, or None when mounting is not allowed
    counts: Counter[str] = field(default_factory=Counter)
    probes: int = 0

    def scenarios(self) -> list[str]:
        names = [f"kill {n}" for n in PROCESS_NAMES]
        names += ["broker restart", "database stop", "upstream FHIR fails", "upstream FHIR hangs"]
        names += ["MLLP peer fails", "MLLP peer hangs"]
        if self.blob_mount is not None:
            names.append("blob store full")
        return names

    def one(self) -> str:
        """Inject one randomly chosen fault and undo it; returns its name."""
        name = self.rng.choice(self.scenarios())
        self.counts[name] += 1
        pause = self.rng.uniform(0.0, 1.5)
        if name.startswith("kill "):
            process = name[len("kill ") :]
            self.site.kill(process)
            time.sleep(pause)
            self.site.start(process)
        elif name == "broker restart":
            self.broker.kill()
            time.sleep(pause)
            self.broker.start()
        elif name == "database stop":
            self.pg.stop("immediate")
            try:
                if self.probes < 4:  # every probe waits on timeouts: a few are enough
                    self.probes += 1
                    probe_listeners(self.site, self.ledger, "database", self.probes)
                time.sleep(pause)
            finally:
                self.pg.start()
        elif name.startswith("upstream FHIR"):
            if name.endswith("fails"):
                self.upstream.state.fail_with = 503
            else:
                self.upstream.state.hang_seconds = 6.0
            time.sleep(1.0 + 2 * pause)
            self.upstream.state.fail_with = None
            self.upstream.state.hang_seconds = 0.0
        elif name.startswith("MLLP peer"):
            self.peer.answer = "close" if name.endswith("fails") else "silent"
            time.sleep(1.0 + 2 * pause)
            self.peer.answer = "AA"
        elif name == "blob store full":
            assert self.blob_mount is not None
            ballast = self.blob_mount / "ballast"
            with contextlib.suppress(OSError), open(ballast, "wb") as out:
                chunk = b"\0" * (1 << 20)
                while True:
                    out.write(chunk)
            try:
                if self.probes < 8:
                    self.probes += 1
                    probe_listeners(self.site, self.ledger, "blob store", self.probes)
                time.sleep(pause)
            finally:
                ballast.unlink()
        return name
