"""Load and soak: mixed traffic (DICOM studies, HL7 v2 messages, FHIR transaction Bundles) at a fixed
rate for a fixed time against the product run as separate processes (HTTP, DICOM SCP, MLLP, default
and inference workers) on a PostgreSQL cluster and a redis-server of its own, writing results back
to a FHIR server and an EHR's MLLP receiver. Records:

- throughput: items sent and acknowledged per second, by protocol;
- acknowledgement latency p50/p99 as the senders saw it, and per hop inside the product from the
  timeline (received -> complete -> de-identified -> queued -> reported -> written back for studies,
  received -> processed for messages);
- the memory (RSS of each process with its children) every few seconds: first and last minute,
  growth, peak;
- queue depths (Celery's queues on Redis) and work in flight, sampled the same way.

Then, in the same run and at the same rates, the peers' baselines: dcmtk's storescp for the DICOM
acknowledgements and a bare asyncio MLLP server that commits each message to PostgreSQL (the one of
bench/mllp_ack_throughput.py) for the HL7 ones, so the latencies sit side by side.

    .venv/bin/python bench/soak.py --minutes 10              # the README's figures
    .venv/bin/python bench/soak.py --minutes 1 --baseline-seconds 20   # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def group_rss_mb(pgid: int) -> float:
    """The resident memory of every process in a process group (the process and its pool)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


class Paced(threading.Thread):
    """Calls `send()` every `interval` seconds until `deadline` (no catching up in bursts: a send
    that runs late pushes the next one, and the lag is recorded)."""

    def __init__(self, name: str, interval: float, deadline: float, send) -> None:  # noqa: ANN001
        super().__init__(name=name, daemon=True)
        self.interval, self.deadline, self.send = interval, deadline, send
        self.latencies: list[float] = []
        self.sent = self.acked = 0
        self.errors: dict[str, int] = defaultdict(int)

    def run(self) -> None:
        due = time.monotonic()
        while due < self.deadline:
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            self.sent += 1
            try:
                for latency in self.send(self.sent):
                    self.latencies.append(latency)
                    self.acked += 1
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                self.errors[type(exc).__name__] += 1
            due = max(due + self.interval, time.monotonic() - self.interval)


# --- senders ---------------------------------------------------------------------------------------


def dicom_send_factory(port: int, ae_title: str, slices: int, size: int, tag: str):  # noqa: ANN201
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from tests.support.phantom import ct_phantom

    ae = AE(ae_title="SOAKMOD")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30

    def send(n: int) -> list[float]:
        ph = ct_phantom(slices=slices, size=size, seed=n, identity={"PatientID": f"SOAK-{tag}-{n}"})
        datasets = [dcmread(io.BytesIO(raw)) for raw in ph.files]
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if not assoc.is_established:
            raise ConnectionError("association refused")
        out = []
        try:
            for ds in datasets:
                started = time.monotonic()
                status = assoc.send_c_store(ds)
                if getattr(status, "Status", None) == 0:
                    out.append(time.monotonic() - started)
        finally:
            assoc.release()
        return out

    return send


def hl7_send_factory(port: int, tag: str):  # noqa: ANN201
    state: dict[str, socket.socket | None] = {"sock": None}

    def send(n: int) -> list[float]:
        if state["sock"] is None:
            state["sock"] = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock = state["sock"]
        raw = (
            f"MSH|^~\\&|ENGINE|HOSP|FHIRAI|HOSP|20260315083000||ADT^A08^ADT_A01|SOAK{tag}{n}|P|2.5.1\r"
            f"EVN|A08|20260315083000\rPID|1||MRN-S{tag}{n}^^^HOSP^MR||Soak^Test{n}||19700101|F\rPV1|1|O\r"
        ).encode()
        started = time.monotonic()
        try:
            sock.sendall(b"\x0b" + raw + b"\x1c\r")
            buf = b""
            while b"\x1c\r" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
        except OSError:
            sock.close()
            state["sock"] = None
            raise
        return [time.monotonic() - started] if b"MSA|AA" in buf or b"MSA|CA" in buf else []

    return send


def fhir_send_factory(port: int, token: str):  # noqa: ANN201
    from tests.faults.harness import bundle, http_post

    def send(n: int) -> list[float]:
        body, _ = bundle(100000 + n)
        started = time.monotonic()
        status, _ = http_post(port, "/fhir/", body, timeout=30, token=token)
        return [time.monotonic() - started] if status and 200 <= status < 300 else []

    return send


def summary_of(thread: Paced, seconds: float) -> dict:
    return {
        "sent": thread.sent,
        "acked": thread.acked,
        "per_s": round(thread.acked / seconds, 2),
        "p50_ms": round(pct(thread.latencies, 0.5) * 1000, 1),
        "p99_ms": round(pct(thread.latencies, 0.99) * 1000, 1),
        "errors": dict(thread.errors),
    }


# --- the run -------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, root: Path) -> dict:
    import psycopg
    import redis

    from tests.faults.harness import PROCESS_NAMES, Site
    from tests.support.fhir_upstream import FhirUpstream
    from tests.support.mllp_peer import MllpPeer
    from tests.support.services import PgCluster, RedisServer

    pg = PgCluster().init()
    pg.start()
    broker = RedisServer(root / "redis")
    broker.start()
    upstream, peer = FhirUpstream().__enter__(), MllpPeer().__enter__()
    site = None
    try:
        db = pg.create_database("fhirai")
        site = Site(
            root / "var",
            {
                "DATABASE_URL": db,
                "CELERY_BROKER_URL": broker.url,
                "FHIRAI_FHIR_UPSTREAM_URL": upstream.url,
                "FHIRAI_HL7_PEERS": f"EHR=127.0.0.1:{peer.port}",
                "FHIRAI_STUDY_QUIET_SECONDS": "5",
                "FHIRAI_LOG_LEVEL": "WARNING",
            },
        )
        site.manage("migrate", "--noinput")
        site.start_all()
        seconds = args.minutes * 60
        deadline = time.monotonic() + seconds
        senders = [
            Paced(
                "dicom",
                60 / args.studies_per_minute,
                deadline,
                dicom_send_factory(site.dicom_port, "FHIRAI", args.slices, args.size, "F"),
            ),
            Paced("hl7", 1 / args.hl7_per_second, deadline, hl7_send_factory(site.mllp_port, "F")),
            Paced("fhir", 1 / args.fhir_per_second, deadline, fhir_send_factory(site.http_port, site.token)),
        ]
        started = time.monotonic()
        for s in senders:
            s.start()
        samples: list[dict] = []
        queues = redis.Redis.from_url(broker.url)
        while any(s.is_alive() for s in senders) or time.monotonic() < deadline:
            sample = {"t": round(time.monotonic() - started, 1)}
            for name in PROCESS_NAMES:
                process = site.processes.get(name)
                sample[f"rss_{name}"] = round(group_rss_mb(process.pid), 1) if process else 0.0
            try:
                sample["queue_default"] = queues.llen("default")
                sample["queue_inference"] = queues.llen("inference")
            except redis.RedisError:
                pass
            with psycopg.connect(db) as conn:
                sample["studies_in_flight"] = conn.execute(
                    "SELECT count(*) FROM ingest_study WHERE state NOT IN ('written_back', 'failed', 'no_model')"
                ).fetchone()[0]
                sample["messages_in_flight"] = conn.execute(
                    "SELECT count(*) FROM ingest_message WHERE state = 'received'"
                ).fetchone()[0]
            samples.append(sample)
            time.sleep(args.sample_seconds)
        elapsed = time.monotonic() - started
        for s in senders:
            s.join()
        settle_started = time.monotonic()
        while time.monotonic() - settle_started < 300:
            with psycopg.connect(db) as conn:
                left = conn.execute(
                    "SELECT (SELECT count(*) FROM ingest_study WHERE state NOT IN ('written_back', 'failed', 'no_model'))"
                    " + (SELECT count(*) FROM ingest_message WHERE state = 'received')"
                ).fetchone()[0]
            if not left:
                break
            time.sleep(2)
        hops = hop_latencies(db)
        memory = {}
        window = max(1, int(60 / args.sample_seconds))
        for name in PROCESS_NAMES:
            series = [s[f"rss_{name}"] for s in samples if s.get(f"rss_{name}")]
            if len(series) >= 2:
                first, last = statistics.median(series[:window]), statistics.median(series[-window:])
                memory[name] = {
                    "first_minute_mb": round(first, 1),
                    "last_minute_mb": round(last, 1),
                    "growth_pct": round(100 * (last - first) / first, 1) if first else None,
                    "peak_mb": round(max(series), 1),
                }
        with psycopg.connect(db) as conn:
            states = dict(conn.execute("SELECT state, count(*) FROM ingest_study GROUP BY state").fetchall())
        return {
            "seconds": round(elapsed, 1),
            "traffic": {s.name: summary_of(s, elapsed) for s in senders},
            "hops_ms": hops,
            "memory": memory,
            "queues_max": {
                k: max((s.get(k, 0) for s in samples), default=0)
                for k in ("queue_default", "queue_inference", "studies_in_flight", "messages_in_flight")
            },
            "study_states": states,
            "upstream_reports": len(upstream.state.all("DiagnosticReport")),
            "samples": samples,
        }
    finally:
        if site is not None:
            site.stop_all()
        upstream.__exit__(None, None, None)
        peer.__exit__(None, None, None)
        broker.close()
        pg.close()


def hop_latencies(db: str) -> dict:
    import psycopg

    hops = {
        "study: first instance -> complete (sending, quiet period)": ("received", "complete"),
        "study: complete -> de-identified": ("complete", "deidentified"),
        "study: de-identified -> queued": ("deidentified", "queued"),
        "study: queued -> reported (inference, report)": ("queued", "reported"),
        "study: reported -> written back": ("reported", "written_back"),
    }
    out = {}
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT item_kind, item_id, event, min(at), max(at) FROM audit_timelineevent "
            "WHERE item_kind IN ('study', 'message') GROUP BY item_kind, item_id, event"
        ).fetchall()
    times: dict[tuple[str, int], dict[str, tuple]] = defaultdict(dict)
    for kind, item, event, first, last in rows:
        times[(kind, item)][event] = (first, last)
    for label, (a, b) in hops.items():
        kind = label.split(":")[0]
        values = []
        for (k, _), events in times.items():
            if k != kind or a not in events or b not in events:
                continue
            start = events[a][0]
            values.append((events[b][0] - start).total_seconds())
        if values:
            out[label] = {
                "n": len(values),
                "p50": round(pct(values, 0.5) * 1000, 1),
                "p99": round(pct(values, 0.99) * 1000, 1),
            }
    with psycopg.connect(db) as conn:
        waits = [
            row[0]
            for row in conn.execute(
                "SELECT extract(epoch FROM min(t.at) - m.received_at) FROM ingest_message m "
                "JOIN audit_timelineevent t ON t.item_kind = 'message' AND t.item_id = m.id AND t.event = 'processed' "
                "GROUP BY m.id, m.received_at"
            )
        ]
    if waits:
        out["message: committed (ACK) -> processed"] = {
            "n": len(waits),
            "p50": round(pct([float(w) for w in waits], 0.5) * 1000, 1),
            "p99": round(pct([float(w) for w in waits], 0.99) * 1000, 1),
        }
    return out


def baselines(args: argparse.Namespace, root: Path) -> dict:
    """The same DICOM and HL7 senders at the same rates against storescp and a bare asyncio MLLP
    server that commits to PostgreSQL."""
    from tests.support.product import free_port, port_open
    from tests.support.services import PgCluster

    out: dict = {}
    seconds = args.baseline_seconds
    storescp = shutil.which("storescp")
    if storescp:
        port = free_port()
        folder = root / "storescp"
        folder.mkdir()
        proc = subprocess.Popen(
            [storescp, "-od", str(folder), "-aet", "FHIRAI", str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            while not port_open(port):
                time.sleep(0.05)
            sender = Paced(
                "dicom",
                60 / args.studies_per_minute,
                time.monotonic() + seconds,
                dicom_send_factory(port, "FHIRAI", args.slices, args.size, "S"),
            )
            sender.start()
            sender.join()
            out["dicom (storescp)"] = summary_of(sender, seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    spec = importlib.util.spec_from_file_location("mllp_bench", ROOT / "bench" / "mllp_ack_throughput.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    pg = PgCluster().init()
    pg.start()
    try:
        db = pg.create_database("bare")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", module.BARE, db, str(port)])
        try:
            while not port_open(port):
                time.sleep(0.05)
            sender = Paced(
                "hl7", 1 / args.hl7_per_second, time.monotonic() + seconds, hl7_send_factory(port, "B")
            )
            sender.start()
            sender.join()
            out["hl7 (bare asyncio + PostgreSQL)"] = summary_of(sender, seconds)
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        pg.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--studies-per-minute", type=float, default=6, help="CT studies per minute")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--hl7-per-second", type=float, default=5)
    parser.add_argument("--fhir-per-second", type=float, default=2)
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--baseline-seconds", type=float, default=60)
    parser.add_argument(
        "--json", action="store_true", help="print the whole result, samples included, as JSON"
    )
    args = parser.parse_args()

    import django

    django.setup()
    with tempfile.TemporaryDirectory(prefix="fhirai-soak-") as tmp:
        result = soak(args, Path(tmp))
        result["baselines"] = baselines(args, Path(tmp))
    if args.json:
        print(json.dumps(result, default=str, indent=1))
        return 0
    print(
        f"soak: {result['seconds']} s; study states {result['study_states']}; {result['upstream_reports']} reports upstream"
    )
    print(f"{'traffic':<34} {'sent':>6} {'acked':>6} {'/s':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for name, t in {**result["traffic"], **result["baselines"]}.items():
        print(
            f"{name:<34} {t['sent']:>6} {t['acked']:>6} {t['per_s']:>6} {t['p50_ms']:>8} {t['p99_ms']:>8} {t['errors'] or ''}"
        )
    print("hops inside fhirai (ms):")
    for name, h in result["hops_ms"].items():
        print(f"  {name:<52} n={h['n']:<5} p50 {h['p50']:>9} p99 {h['p99']:>9}")
    print("memory (MB, process with its children): first minute -> last minute (growth), peak")
    for name, m in result["memory"].items():
        print(
            f"  {name:<18} {m['first_minute_mb']:>7} -> {m['last_minute_mb']:>7} ({m['growth_pct']:+}%), peak {m['peak_mb']}"
        )
    print(f"max queue depths and work in flight: {result['queues_max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
