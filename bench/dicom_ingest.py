"""DICOM ingest (issue 9): C-STORE images/s of fhirai against dcmtk's storescp and Orthanc, over one
association and over four, plus STOW-RS instances/s, in one run and one table.

Every receiver is started by this script on free loopback ports with its own temporary storage, is
fresh for each measurement (an empty database or folder), and is stopped afterwards:

- fhirai: `python manage.py dicom_scp` (the production listener alone: it commits the blob and the
  database row of each instance before answering Success) on PostgreSQL (`--database-url`, a
  database `fhirai_bench_ingest_*` made from a migrated template, dropped at the end), and, unless
  `--no-sqlite`, on its embedded defaults (SQLite under FHIRAI_DATA_DIR);
- dcmtk: `storescp +xa -od DIR PORT` (writes each file, no fsync);
- Orthanc: `/usr/sbin/Orthanc` with a minimal JSON config (storage and index in a temp folder, no
  compression, no plugins);
- optionally (`--targets ...,bare`) a pynetdicom SCP that answers Success without storing anything:
  the floor of the library fhirai's SCP is built on.

The sender is dcmtk's `storescu` (TCP_NODELAY=1 for every dcmtk process, Orthanc included: Debian's
dcmtk leaves Nagle on otherwise), timed from process start to exit; four associations are four
storescu processes at once, each with a quarter of the files, timed until the last exits. After each
measurement the receiver's stored count is checked (fhirai: rows in ingest_instance; storescp: files;
Orthanc: /statistics CountInstances).

STOW-RS: the same files POSTed to fhirai's `/dicomweb/studies` (`python manage.py http`, waitress) as
multipart/related; type="application/dicom", `--stow-batch` instances per request over keep-alive
connections, from one client and from four at once. Orthanc 1.10 (Debian) has no DICOMweb plugin, so
its comparison point is its REST `POST /instances`, one file per request, same clients.

Exit status 1 on an error (a receiver that did not start or did not store every instance, a failed
request); missing the 1.5x target is reported, not an error."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.phantom import ct_phantom  # noqa: E402
from tests.support.product import free_port  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/fhirai_bench_ingest"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
TARGETS = (
    "fhirai",
    "fhirai-sqlite",
    "fhirai-pynetdicom",
    "storescp",
    "orthanc",
    "bare",
    "bare-bigpdu",
    "bare-fhirai",
    "fhirai-bigpdu",
)
BIG_PDU = 1 << 20  # what-if experiments: pynetdicom's default maximum PDU received is 16,382 bytes


class BenchError(Exception):
    pass


# --- input ------------------------------------------------------------------------------------------
def write_study(base: Path, slices: int, size: int, parts: int) -> tuple[Path, list[Path], list[Path]]:
    """One CT study in base/all, and the same files (hard links) split into `parts` folders."""
    everything = base / "all"
    everything.mkdir(parents=True)
    files = []
    for k, raw in enumerate(ct_phantom(slices=slices, size=size, seed=9).files):
        path = everything / f"ct{k:04d}.dcm"
        path.write_bytes(raw)
        files.append(path)
    folders = []
    for i in range(parts):
        folder = base / f"part{i}"
        folder.mkdir()
        for path in files[i::parts]:
            os.link(path, folder / path.name)
        folders.append(folder)
    return everything, folders, files


# --- processes --------------------------------------------------------------------------------------
def cpu_seconds(sid: int) -> float:
    """user+system CPU of the processes of a session (the receiver started with its own session,
    forked servers included), from /proc."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 (session id), counted after the ")"
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Receiver:
    """A started receiver process: how to stop it and how many instances it holds."""

    def __init__(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        port: int,
        aet: str,
        count: Callable[[], int],
        log: Path,
        cleanup: Callable[[], None] = lambda: None,
        http: str = "",
    ) -> None:
        self.name, self.proc, self.port, self.aet, self.count = name, proc, port, aet, count
        self.log, self.cleanup, self.http = log, cleanup, http

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.cleanup()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_echo(rx: Receiver, timeout: float = 90) -> None:
    """Ready when a C-ECHO succeeds (a bare TCP probe would hold one of fhirai's association slots
    until its ARTIM timer ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rx.proc.poll() is not None:
            raise BenchError(f"{rx.name} exited (rc {rx.proc.returncode}):\n{rx.tail()}")
        if listening(rx.port):
            done = subprocess.run(
                ["echoscu", "-aec", rx.aet, "127.0.0.1", str(rx.port)], env=NODELAY, capture_output=True
            )
            if done.returncode == 0:
                return
        time.sleep(0.2)
    raise BenchError(f"{rx.name} did not answer C-ECHO on {rx.port}:\n{rx.tail()}")


def listening(port: int) -> bool:
    """Is something listening? Checked from /proc/net/tcp, so no connection is made."""
    hexport = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[1].endswith(":" + hexport) and cols[3] == "0A":  # LISTEN
                return True
    return False


def wait_http(rx: Receiver, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rx.proc.poll() is not None:
            raise BenchError(f"{rx.name} exited (rc {rx.proc.returncode}):\n{rx.tail()}")
        try:
            with urllib.request.urlopen(rx.http + path, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BenchError(f"{rx.name} did not answer HTTP {path}:\n{rx.tail()}")


# --- fhirai -----------------------------------------------------------------------------------------
def fhirai_env(data_dir: Path, database_url: str | None, broker_url: str | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_", "DJANGO_", "PYTEST"))}
    base.pop("DATABASE_URL", None)
    base.pop("CELERY_BROKER_URL", None)
    env = {
        **base,
        "DJANGO_SETTINGS_MODULE": "fhirai.settings",
        "FHIRAI_DATA_DIR": str(data_dir),
        "FHIRAI_DEID_SECRET": "bench",
        "FHIRAI_LOG_LEVEL": "WARNING",
        # STOW-RS here measures the ingest path, as C-STORE does (no credentials on either).
        "FHIRAI_REQUIRE_TOKENS": "false",
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    return env


class Databases:
    """fhirai_bench_ingest_tpl (migrated once), and a fresh copy of it per measurement."""

    def __init__(self, url: str, broker_url: str, workdir: Path) -> None:
        import psycopg  # noqa: F401 - fail early when missing

        head, name = url.rsplit("/", 1)
        if not name.startswith("fhirai_bench_"):
            raise BenchError(f"--database-url must name a database fhirai_bench_*, not {name!r}")
        self.head, self.prefix, self.broker, self.workdir = head, name, broker_url, workdir
        self.template = f"{name}_tpl"
        self.made: list[str] = []

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.head}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def __enter__(self) -> Databases:
        self.admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self.admin(f'CREATE DATABASE "{self.template}"')
        self.made.append(self.template)
        env = fhirai_env(self.workdir / "tpl-var", f"{self.head}/{self.template}", self.broker)
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0", "--noinput"],
            cwd=ROOT,
            env=env,
            capture_output=True,
        )
        if done.returncode:
            raise BenchError(f"migrate failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
        return self

    def fresh(self) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return f"{self.head}/{name}"

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.made:
            self.made.remove(name)

    def __exit__(self, *exc: object) -> None:
        for name in list(self.made):
            try:
                self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as e:  # noqa: BLE001
                print(f"warning: could not drop {name}: {e}", file=sys.stderr)


def pg_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM ingest_instance").fetchone()[0])


def sqlite_template(workdir: Path) -> Path:
    tpl = workdir / "sqlite-tpl"
    env = fhirai_env(tpl, None, None)
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0", "--noinput"], cwd=ROOT, env=env, capture_output=True
    )
    if done.returncode:
        raise BenchError(f"migrate (SQLite) failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    return tpl


def sqlite_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "fhirai.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM ingest_instance").fetchone()[0])


PDU_SCP = """
import signal, sys, threading
import django
django.setup()
import integrations.dicom.scp as scp
made = scp.application_entity
def application_entity():
    ae = made()
    ae.maximum_pdu_size = int(sys.argv[1])
    return ae
scp.application_entity = application_entity
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *a: stop.set())
server = scp.server_start()
stop.wait()
server.shutdown()
"""


def start_fhirai(
    workdir: Path,
    dbs: Databases | None,
    sqlite_tpl: Path | None,
    command: str = "dicom_scp",
    pdu: int = 0,
    engine: str = "",
) -> Receiver:
    data = workdir / f"fhirai-{uuid.uuid4().hex[:6]}"
    port = free_port()
    if dbs is not None:
        url = dbs.fresh()
        env = fhirai_env(data, url, dbs.broker)
        count: Callable[[], int] = lambda: pg_count(url)  # noqa: E731
        name = "fhirai (PostgreSQL)"

        def cleanup() -> None:
            dbs.drop(url)
            shutil.rmtree(data, ignore_errors=True)

    else:
        assert sqlite_tpl is not None
        shutil.copytree(sqlite_tpl, data)
        env = fhirai_env(data, None, None)
        count = lambda: sqlite_count(data)  # noqa: E731
        name = "fhirai (SQLite)"

        def cleanup() -> None:
            shutil.rmtree(data, ignore_errors=True)

    data.mkdir(parents=True, exist_ok=True)
    if engine:
        env["FHIRAI_DICOM_ENGINE"] = engine
        name += f", {engine} engine"
    log = workdir / f"{data.name}.log"
    if command == "http":
        env["FHIRAI_HTTP_PORT"] = str(port)
        proc = spawn([sys.executable, "manage.py", "http"], env, log)
        rx = Receiver(name, proc, port, "FHIRAI", count, log, cleanup, http=f"http://127.0.0.1:{port}")
        wait_http(rx, "/healthz")
        return rx
    env["FHIRAI_DICOM_PORT"] = str(port)
    if pdu:  # what-if: the same SCP with a larger maximum PDU (a bench-side patch, not the product)
        env["FHIRAI_DICOM_ENGINE"] = "pynetdicom"
        proc = spawn([sys.executable, "-c", PDU_SCP, str(pdu)], env, log)
    else:
        proc = spawn([sys.executable, "manage.py", command], env, log)
    rx = Receiver(name, proc, port, "FHIRAI", count, log, cleanup)
    wait_echo(rx)
    return rx


# --- dcmtk storescp, Orthanc, bare pynetdicom ---------------------------------------------------------
def start_storescp(workdir: Path) -> Receiver:
    out = Path(tempfile.mkdtemp(prefix="storescp-", dir=workdir))
    port = free_port()
    log = workdir / f"{out.name}.log"
    proc = spawn(["storescp", "-aet", "STORESCP", "+xa", "-od", str(out), str(port)], NODELAY, log)
    rx = Receiver(
        "dcmtk storescp",
        proc,
        port,
        "STORESCP",
        lambda: sum(1 for p in out.iterdir() if p.is_file()),
        log,
        lambda: shutil.rmtree(out, ignore_errors=True),
    )
    wait_echo(rx)
    return rx


def orthanc_version() -> str:
    try:
        out = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout
        return out.split()[1]
    except (OSError, IndexError):
        return "?"


def start_orthanc(workdir: Path) -> Receiver:
    base = Path(tempfile.mkdtemp(prefix="orthanc-", dir=workdir))
    dicom, http = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(base / "storage"),
        "IndexDirectory": str(base / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "Plugins": [],
        "SaveJobs": False,
    }
    (base / "orthanc.json").write_text(json.dumps(config))
    log = workdir / f"{base.name}.log"
    proc = spawn([ORTHANC, str(base / "orthanc.json")], NODELAY, log, cwd=base)
    url = f"http://127.0.0.1:{http}"

    def count() -> int:
        with urllib.request.urlopen(url + "/statistics", timeout=30) as response:
            return int(json.load(response)["CountInstances"])

    rx = Receiver(
        f"Orthanc {orthanc_version()}",
        proc,
        dicom,
        "ORTHANC",
        count,
        log,
        lambda: shutil.rmtree(base, ignore_errors=True),
        http=url,
    )
    wait_http(rx, "/system")
    wait_echo(rx)
    return rx


BARE_SCP = """
import socket, sys
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

class NoDelay(ThreadedAssociationServer):
    def get_request(self):
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

n = 0
def store(event):
    global n
    event.encoded_dataset()
    n += 1
    return 0
ae = AE("BARE")
ae.maximum_associations = 16
ae.maximum_pdu_size = int(sys.argv[3])
ae.add_supported_context(Verification)
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
server = ae.make_server(("127.0.0.1", int(sys.argv[1])), server_class=NoDelay,
                        evt_handlers=[(evt.EVT_C_STORE, store)])
import signal, threading
signal.signal(signal.SIGUSR1, lambda *a: open(sys.argv[2], "w").write(str(n)))
server.serve_forever()
"""


def start_bare(workdir: Path, pdu: int = 16382) -> Receiver:
    port = free_port()
    counter = workdir / f"bare-{port}.count"
    log = workdir / f"bare-{port}.log"
    proc = spawn([sys.executable, "-c", BARE_SCP, str(port), str(counter), str(pdu)], dict(os.environ), log)

    def count() -> int:
        counter.unlink(missing_ok=True)
        os.kill(proc.pid, signal.SIGUSR1)
        for _ in range(50):
            if counter.exists() and counter.read_text():
                return int(counter.read_text())
            time.sleep(0.05)
        return -1

    rx = Receiver(f"pynetdicom, no work, max PDU {pdu}", proc, port, "BARE", count, log)
    wait_echo(rx)
    return rx


BARE_FHIRAI_SCP = """
import signal, sys, threading
import django
django.setup()
from integrations.dicom.acceptor import Acceptor
from integrations.dicom.scp import application_entity
n = 0
def store(calling, peer, syntax, raw):
    global n
    n += 1
    return 0, ""
acceptor = Acceptor(("127.0.0.1", int(sys.argv[1])), application_entity(), store=store,
                    rejected=lambda *a: None, check=lambda *a: None)
signal.signal(signal.SIGUSR1, lambda *a: open(sys.argv[2], "w").write(str(n)))
acceptor.serve_forever()
"""


def start_bare_fhirai(workdir: Path) -> Receiver:
    """fhirai's own acceptor (integrations.dicom.acceptor) whose store answers Success without
    storing: the floor of the fhirai engine (Part 10 bytes built, nothing written)."""
    port = free_port()
    counter = workdir / f"bare-fhirai-{port}.count"
    log = workdir / f"bare-fhirai-{port}.log"
    env = fhirai_env(workdir / f"bare-fhirai-{port}", None, None)
    proc = spawn([sys.executable, "-c", BARE_FHIRAI_SCP, str(port), str(counter)], env, log)

    def count() -> int:
        counter.unlink(missing_ok=True)
        os.kill(proc.pid, signal.SIGUSR1)
        for _ in range(50):
            if counter.exists() and counter.read_text():
                return int(counter.read_text())
            time.sleep(0.05)
        return -1

    rx = Receiver("fhirai acceptor, no work", proc, port, "FHIRAI", count, log)
    wait_echo(rx)
    return rx


# --- senders ----------------------------------------------------------------------------------------
def storescu(folders: list[Path], rx: Receiver) -> float:
    """storescu per folder, all at once; seconds from the first start to the last exit."""
    argv = ["storescu", "-aet", "BENCHSCU", "-aec", rx.aet, "+sd", "127.0.0.1", str(rx.port)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*argv, str(f)], env=NODELAY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for f in folders
    ]
    outs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - start
    for p, out in zip(procs, outs, strict=True):
        if p.returncode:
            raise BenchError(
                f"storescu to {rx.name} failed (rc {p.returncode}): {out.decode(errors='replace')[-2000:]}"
            )
    return seconds


def multipart(files: list[bytes], boundary: str) -> bytes:
    chunks = []
    for raw in files:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(raw)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def stow(url: str, raws: list[bytes], clients: int, batch: int) -> float:
    """POST the instances in batches, `clients` keep-alive sessions at once; seconds for all."""
    import requests

    boundary = uuid.uuid4().hex
    batches = [raws[i : i + batch] for i in range(0, len(raws), batch)]
    bodies = [multipart(b, boundary) for b in batches]  # built before the clock starts
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }

    def client(mine: list[tuple[int, bytes]]) -> None:
        with requests.Session() as session:
            for i, body in mine:
                r = session.post(url, data=body, headers=headers, timeout=300)
                if r.status_code != 200:
                    hint = ""
                    if r.status_code == 400 and len(body) > 2_621_440:
                        hint = " (over Django's DATA_UPLOAD_MAX_MEMORY_SIZE, 2.5 MiB: lower --stow-batch)"
                    raise BenchError(
                        f"STOW-RS batch {i} ({len(body)} bytes): HTTP {r.status_code}{hint}: {r.text[:300]}"
                    )
                kept = r.json().get("00081199", {}).get("Value", [])
                if len(kept) != len(batches[i]):
                    raise BenchError(f"STOW-RS batch {i}: {len(kept)} of {len(batches[i])} referenced")

    return run_clients(client, list(enumerate(bodies)), clients)


def orthanc_rest(url: str, raws: list[bytes], clients: int) -> float:
    import requests

    def client(mine: list[tuple[int, bytes]]) -> None:
        with requests.Session() as session:
            for i, raw in mine:
                r = session.post(
                    url + "/instances", data=raw, headers={"Content-Type": "application/dicom"}, timeout=300
                )
                if r.status_code != 200 or r.json().get("Status") != "Success":
                    raise BenchError(f"Orthanc POST /instances {i}: HTTP {r.status_code}: {r.text[:300]}")

    return run_clients(client, list(enumerate(raws)), clients)


def run_clients(client: Callable[[list[Any]], None], items: list[Any], clients: int) -> float:
    shares = [items[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client, s) for s in shares]:
            f.result()
    return time.perf_counter() - start


# --- one measurement --------------------------------------------------------------------------------
def measure(
    start: Callable[[], Receiver], send: Callable[[Receiver], float], expected: int
) -> dict[str, float]:
    rx = start()
    try:
        cpu0 = cpu_seconds(rx.proc.pid)
        seconds = send(rx)
        cpu = cpu_seconds(rx.proc.pid) - cpu0
        stored = rx.count()
        if rx.proc.poll() is not None:
            raise BenchError(f"{rx.name} exited during the run:\n{rx.tail()}")
        if stored != expected:
            raise BenchError(f"{rx.name} holds {stored} instances, {expected} sent:\n{rx.tail()}")
    except BenchError:
        kept = Path(tempfile.gettempdir()) / f"dicom_ingest_failed_{rx.log.stem}.log"
        shutil.copyfile(rx.log, kept)
        print(f"  (the receiver's log is kept in {kept})", file=sys.stderr)
        raise
    finally:
        rx.stop()
    return {"seconds": seconds, "rate": expected / seconds, "cpu_ms_per_image": 1000 * cpu / expected}


ERRORS: list[str] = []


def attempt(
    key: str, label: str, run: int, results: dict[str, Any], do: Callable[[], dict[str, float]]
) -> None:
    """One cell's measurement; a failure is reported and counted (exit status 1), the run goes on."""
    try:
        m = do()
    except BenchError as exc:
        ERRORS.append(f"run {run + 1} {key} x{label}: {exc}")
        print(f"  run {run + 1}: {key:14s} x{label}: ERROR {str(exc)[:300]}", file=sys.stderr, flush=True)
        return
    results.setdefault(key, {}).setdefault(label, []).append(m)
    _progress(run, key, label, m)


# --- profile ----------------------------------------------------------------------------------------
PROFILE_SCP = """
import cProfile, os, pstats, signal, sys, threading
import django
django.setup()
import pynetdicom.association as A
from integrations.dicom.acceptor import Acceptor
from integrations.dicom.scp import server_start
profiles, lock = [], threading.Lock()
def wrap(run):
    def profiled(*args):
        p = cProfile.Profile()
        with lock:
            profiles.append(p)
        p.runcall(run, *args)
    return profiled
A.Association.run = wrap(A.Association.run)  # the pynetdicom engine's association threads
Acceptor._run = wrap(Acceptor._run)  # the fhirai engine's
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
server = server_start()
stop.wait()
server.shutdown()
stats = None
for p in profiles:
    stats = pstats.Stats(p) if stats is None else (stats.add(p) or stats)
stats.dump_stats(sys.argv[1])
"""


def profile_fhirai(workdir: Path, dbs: Databases, folder: Path, expected: int) -> str:
    """fhirai's SCP (same code, PostgreSQL) with cProfile around every association thread."""
    import io
    import pstats

    url = dbs.fresh()
    data = workdir / "profile-var"
    env = fhirai_env(data, url, dbs.broker)
    port = free_port()
    env["FHIRAI_DICOM_PORT"] = str(port)
    out = workdir / "scp.prof"
    log = workdir / "profile.log"
    proc = spawn([sys.executable, "-c", PROFILE_SCP, str(out)], env, log)
    rx = Receiver("fhirai (profiled)", proc, port, "FHIRAI", lambda: pg_count(url), log)
    try:
        wait_echo(rx)
        seconds = storescu([folder], rx)
        if rx.count() != expected:
            raise BenchError("profiled fhirai did not store every instance")
    finally:
        rx.stop()
        dbs.drop(url)
    buf = io.StringIO()
    stats = pstats.Stats(str(out), stream=buf)
    buf.write(
        f"profiled run: {expected} instances over 1 association in {seconds:.2f} s "
        f"({expected / seconds:.1f} images/s under cProfile)\n"
    )
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(35)
    return buf.getvalue()


# --- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3, help="measurements per cell; the median is shown")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 slices of 256x256, 1 run")
    parser.add_argument(
        "--targets",
        default="fhirai,fhirai-sqlite,storescp,orthanc,stow",
        help="comma-separated from fhirai, fhirai-sqlite, storescp, orthanc, stow; what-ifs: bare, bare-fhirai, "
        "bare-bigpdu, fhirai-bigpdu, fhirai-pynetdicom",
    )
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--stow-batch",
        type=int,
        default=4,
        help="instances per STOW-RS request (4 x 0.5 MB: fhirai answers 400 to a body over 2.5 MiB)",
    )
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile fhirai's SCP (PostgreSQL, 1 association)"
    )
    parser.add_argument("--json", default="", help="write the raw measurements to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.size, args.runs = 40, 256, 1
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {*TARGETS, "stow"}
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    for tool in ("storescu", "echoscu") + (("storescp",) if "storescp" in targets else ()):
        if not shutil.which(tool):
            print(f"dcmtk's {tool} is not installed (apt-get install dcmtk)", file=sys.stderr)
            return 1
    if "orthanc" in targets and not os.access(ORTHANC, os.X_OK):
        print(f"{ORTHANC} is missing: Orthanc left out", file=sys.stderr)
        targets.remove("orthanc")

    workdir = Path(tempfile.mkdtemp(prefix="fhirai-bench-ingest-"))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    names: dict[str, str] = {}
    profile = ""
    try:
        everything, parts, files = write_study(workdir / "in", args.slices, args.size, args.associations)
        raws = [p.read_bytes() for p in files]
        mb = sum(len(r) for r in raws) / 1e6
        n = len(raws)
        need_pg = (
            any(t in targets for t in ("fhirai", "fhirai-bigpdu", "fhirai-pynetdicom", "stow"))
            or args.profile
        )
        with Databases(args.database_url, args.broker_url, workdir) if need_pg else _Null() as dbs:
            tpl = sqlite_template(workdir) if "fhirai-sqlite" in targets else None
            starters: dict[str, Callable[[], Receiver]] = {
                "fhirai": lambda: start_fhirai(workdir, dbs, None),
                "fhirai-sqlite": lambda: start_fhirai(workdir, None, tpl),
                "storescp": lambda: start_storescp(workdir),
                "orthanc": lambda: start_orthanc(workdir),
                "bare": lambda: start_bare(workdir),
                "bare-bigpdu": lambda: start_bare(workdir, BIG_PDU),
                "bare-fhirai": lambda: start_bare_fhirai(workdir),
                "fhirai-pynetdicom": lambda: start_fhirai(workdir, dbs, None, engine="pynetdicom"),
                "fhirai-bigpdu": lambda: start_fhirai(workdir, dbs, None, pdu=BIG_PDU),
            }
            for run in range(args.runs):
                for target in targets:
                    if target == "stow":
                        cells = {
                            "stow-fhirai": (
                                lambda: start_fhirai(workdir, dbs, None, command="http"),
                                lambda c: (
                                    lambda rx: stow(rx.http + "/dicomweb/studies", raws, c, args.stow_batch)
                                ),
                            ),
                        }
                        if "orthanc" in targets:
                            cells["rest-orthanc"] = (
                                lambda: start_orthanc(workdir),
                                lambda c: lambda rx: orthanc_rest(rx.http, raws, c),
                            )
                        for key, (starter, sender) in cells.items():
                            for label, clients in (("1", 1), ("4", 4)):
                                send = sender(clients)
                                attempt(key, label, run, results, lambda s=starter, c=send: measure(s, c, n))
                        continue
                    for label, folders in (("1", [everything]), ("4", parts)):
                        attempt(
                            target,
                            label,
                            run,
                            results,
                            lambda t=target, f=folders: measure(starters[t], lambda rx: storescu(f, rx), n),
                        )
            if "orthanc" in targets:
                names["orthanc"] = f"Orthanc {orthanc_version()}"
            if args.profile:
                profile = profile_fhirai(workdir, dbs, everything, n)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report(results, names, args, n, mb)
    if profile:
        print("\n" + profile)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"config": vars(args), "results": results, "errors": ERRORS}, indent=1)
        )
    for error in ERRORS:
        print(f"error: {error}", file=sys.stderr)
    return 1 if ERRORS else 0


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(run: int, target: str, label: str, m: dict[str, float]) -> None:
    print(
        f"  run {run + 1}: {target:14s} x{label}: {m['rate']:7.1f}/s  ({m['seconds']:.2f} s, "
        f"receiver CPU {m['cpu_ms_per_image']:.1f} ms/image)",
        file=sys.stderr,
        flush=True,
    )


LABELS = {
    "fhirai": "fhirai dicom_scp, PostgreSQL",
    "fhirai-sqlite": "fhirai dicom_scp, SQLite (embedded defaults)",
    "storescp": "dcmtk storescp +xa (no fsync)",
    "orthanc": "Orthanc",
    "bare": "pynetdicom SCP, no storage (floor)",
    "bare-bigpdu": "pynetdicom SCP, no storage, max PDU 1 MiB",
    "bare-fhirai": "fhirai acceptor, no storage (floor)",
    "fhirai-pynetdicom": "fhirai dicom_scp, PostgreSQL, pynetdicom engine",
    "fhirai-bigpdu": "fhirai SCP, PostgreSQL, max PDU 1 MiB (what-if)",
    "stow-fhirai": "STOW-RS fhirai (http, 10/request)",
    "rest-orthanc": "Orthanc REST POST /instances (1/request)",
}


def report(
    results: dict[str, Any], names: dict[str, str], args: argparse.Namespace, n: int, mb: float
) -> None:
    def med(key: str, label: str, field: str = "rate") -> float | None:
        cells = results.get(key, {}).get(label)
        return statistics.median(c[field] for c in cells) if cells else None

    print(
        f"\n{n} CT slices {args.size}x{args.size} 16-bit, one study, {mb:.1f} MB; sender dcmtk storescu "
        f"(TCP_NODELAY=1); median of {args.runs} run(s) per cell; {os.cpu_count()} cores"
    )
    head = f"{'target':56s} | {'1 assoc img/s':>13s} | {f'{args.associations} assoc img/s':>13s} | {'ratio /Orthanc (1 | 4)':>22s} | CPU ms/img (1 | 4)"
    print(head)
    print("-" * len(head))
    ref = {lab: med("orthanc", lab) for lab in ("1", "4")}
    rest_ref = {lab: med("rest-orthanc", lab) for lab in ("1", "4")}
    for key in (*TARGETS, "stow-fhirai", "rest-orthanc"):
        if key not in results:
            continue
        base = rest_ref if key in ("stow-fhirai", "rest-orthanc") else ref
        label = LABELS[key].replace("10/request", f"{args.stow_batch}/request")
        if key == "orthanc":
            label = names.get("orthanc", label)
        if key in ("stow-fhirai", "rest-orthanc"):
            label += " [1|4 clients]"
        r1, r4 = med(key, "1"), med(key, "4")
        ratio = " | ".join(
            f"{r / b:.2f}" if r and b else "n/a" for r, b in ((r1, base["1"]), (r4, base["4"]))
        )
        c1, c4 = med(key, "1", "cpu_ms_per_image"), med(key, "4", "cpu_ms_per_image")
        print(f"{label:56s} | {_f(r1):>13s} | {_f(r4):>13s} | {ratio:>22s} | {_f(c1)} | {_f(c4)}")
    if "stow-fhirai" in results:
        print(
            f"{'STOW-RS Orthanc':56s} | {'n/a':>13s} | {'n/a':>13s} | (no DICOMweb plugin in Debian's Orthanc)"
        )
    if ref["1"] and "fhirai" in results:
        f1, f4 = med("fhirai", "1"), med("fhirai", "4")
        assert f1 and f4 and ref["4"]
        met = f1 >= 1.5 * ref["1"] and f4 >= 1.5 * ref["4"]
        print(
            f"target fhirai (PostgreSQL) >= 1.5x Orthanc's images/s: {'met' if met else 'NOT met'} "
            f"({f1 / ref['1']:.2f}x over 1 association, {f4 / ref['4']:.2f}x over {args.associations})"
        )
    for key, cells in results.items():
        for label, ms in cells.items():
            print(f"  runs {key} x{label}: " + ", ".join(f"{m['rate']:.1f}" for m in ms), file=sys.stderr)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


if __name__ == "__main__":
    sys.exit(main())
