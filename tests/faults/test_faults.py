"""Faults at random points while DICOM, HL7 and FHIR traffic flows; afterwards every acknowledged
item is accounted for, nothing is duplicated downstream, and while storage was down the listeners
refused in their protocols' own terms (never a false ACK).

FHIRAI_FAULT_POINTS (default 50) sets how many faults one run injects, FHIRAI_FAULT_SEED replays a
run (the seed is printed). The scenario list and the counts are printed at the end (`pytest -s`
shows them; CI's log keeps them through the -ra summary of a failure, and bench/faults.py runs the
same harness for longer)."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.faults.harness import Injector, Ledger, Site, dicom_sender, fhir_sender, hl7_sender
from tests.support.fhir_upstream import FhirUpstream
from tests.support.mllp_peer import MllpPeer
from tests.support.services import PgCluster, RedisServer, pg_bin

pytestmark = pytest.mark.e2e

FINAL_STUDY = ("written_back", "failed", "no_model")
OUTAGE_REFUSALS = ("DICOM A700", "HL7 AE", "HL7 AR", "HTTP 503 Retry-After", "FHIR read 503 Retry-After")


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def run_faults(root: Path, points: int, seed: int, *, studies: int, messages: int, bundles: int) -> dict:
    """One harness run; returns its summary (raises AssertionError on a broken invariant)."""
    rng = random.Random(seed)
    pg = PgCluster().init()
    pg.start()
    broker = RedisServer(root / "redis")
    broker.start()
    data_dir = root / "var"
    blob_dir = data_dir / "blobs"
    mounted = _mount_tmpfs(blob_dir, 400)
    upstream, peer = FhirUpstream().__enter__(), MllpPeer().__enter__()
    site = None
    try:
        db_url = pg.create_database("fhirai")
        site = Site(
            data_dir,
            {
                "DATABASE_URL": db_url,
                "CELERY_BROKER_URL": broker.url,
                "FHIRAI_FHIR_UPSTREAM_URL": upstream.url,
                "FHIRAI_FHIR_UPSTREAM_TIMEOUT": "3",
                "FHIRAI_HL7_PEERS": f"EHR=127.0.0.1:{peer.port}",
                "FHIRAI_HL7_TIMEOUT": "3",
                "FHIRAI_STUDY_QUIET_SECONDS": "6",
                "FHIRAI_SWEEP_SECONDS": "1",
                "FHIRAI_STALL_SECONDS": "8",
                "FHIRAI_INFERENCE_TIMEOUT": "30",
                "FHIRAI_WRITEBACK_BACKOFF_MAX": "2",
                "FHIRAI_HTTP_PROCESSES": "1",
            },
        )
        site.manage("migrate", "--noinput")
        site.start_all()
        ledger = Ledger()
        stop = threading.Event()
        # Paced so that the traffic lasts about as long as the faults do (a fault every ~1.5 s).
        window = points * 1.5
        senders = [
            threading.Thread(
                target=dicom_sender,
                args=(site, ledger, studies, stop, seed, window / (studies * 8)),
                daemon=True,
            ),
            threading.Thread(
                target=hl7_sender, args=(site, ledger, messages, stop, window / messages), daemon=True
            ),
            threading.Thread(
                target=fhir_sender, args=(site, ledger, bundles, stop, window / bundles), daemon=True
            ),
        ]
        for thread in senders:
            thread.start()
        injector = Injector(site, ledger, rng, pg, broker, upstream, peer, blob_dir if mounted else None)
        started = time.monotonic()
        for _ in range(points):
            time.sleep(rng.uniform(0.2, 1.2))
            injector.one()
        for thread in senders:
            thread.join(timeout=180)
        stop.set()
        unsent = [t.name for t in senders if t.is_alive()]
        site.wait_ready()
        settled = _settle(site, db_url, timeout=240)
        summary = _check(site, db_url, ledger, upstream, peer)
        summary.update(
            seed=seed,
            faults=dict(injector.counts),
            fault_points=sum(injector.counts.values()),
            scenarios=injector.scenarios(),
            blob_store_full="tested on a tmpfs" if mounted else "not tested: mounting a tmpfs was refused",
            refusals=dict(ledger.refusals),
            answers=dict(ledger.answers),
            seconds=round(time.monotonic() - started, 1),
            settled=settled,
        )
        assert not unsent, f"senders never got every item acknowledged: {unsent} {summary}"
        return summary
    finally:
        if site is not None:
            site.stop_all()
        upstream.__exit__(None, None, None)
        peer.__exit__(None, None, None)
        broker.close()
        pg.close()
        if mounted:
            subprocess.run(["umount", "-l", str(blob_dir)], capture_output=True)


def _settle(site: Site, db_url: str, timeout: float) -> dict[str, int]:
    """Wait until nothing is in flight: studies, messages, jobs and deliveries in final states."""
    deadline = time.monotonic() + timeout
    pending: dict[str, int] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.OperationalError), psycopg.connect(db_url) as conn:
            pending = {
                "studies": conn.execute(
                    "SELECT count(*) FROM ingest_study WHERE role = 'clinical' AND NOT state = ANY(%s)",
                    (list(FINAL_STUDY),),
                ).fetchone()[0],
                "messages": conn.execute(
                    "SELECT count(*) FROM ingest_message WHERE state = 'received'"
                ).fetchone()[0],
                "jobs": conn.execute(
                    "SELECT count(*) FROM routing_inferencejob WHERE state IN ('waiting', 'queued')"
                ).fetchone()[0],
                "deliveries": conn.execute(
                    "SELECT count(*) FROM results_delivery WHERE state IN ('pending', 'sending')"
                ).fetchone()[0],
            }
            if not any(pending.values()):
                return pending
        time.sleep(1)
    raise AssertionError(f"still in flight after {timeout} s: {pending}\n{site.tail('worker-default')}")


def _check(site: Site, db_url: str, ledger: Ledger, upstream: FhirUpstream, peer: MllpPeer) -> dict:
    problems: list[str] = [*ledger.false_acks]
    with psycopg.connect(db_url) as conn:
        stored = {row[0] for row in conn.execute("SELECT sop_instance_uid FROM ingest_instance")}
        lost = sorted(set(ledger.acked_instances) - stored)
        if lost:
            problems.append(f"{len(lost)} acknowledged instances missing")
        study_uids = sorted(set(ledger.acked_instances.values()))
        states = dict(
            conn.execute(
                "SELECT study_uid, state || ':' || error FROM ingest_study WHERE study_uid = ANY(%s)",
                (study_uids,),
            ).fetchall()
        )
        for uid in study_uids:
            if uid not in states:
                problems.append(f"study {uid} missing")
        failed_studies = {uid: s for uid, s in states.items() if not s.startswith("written_back")}
        messages = Counter(
            row[0]
            for row in conn.execute(
                "SELECT control_id FROM ingest_message WHERE control_id = ANY(%s)",
                (list(ledger.acked_messages),),
            )
        )
        for control in ledger.acked_messages:
            if messages[control] != 1:
                problems.append(f"HL7 {control}: {messages[control]} rows")
        failed_messages = conn.execute(
            "SELECT count(*) FROM ingest_message WHERE state = 'failed'"
        ).fetchone()[0]
        deliveries = Counter(
            f"{dest.split(':')[0]}:{state}"
            for dest, state in conn.execute("SELECT destination, state FROM results_delivery")
        )
        hl7_delivered = conn.execute(
            "SELECT count(*) FROM results_delivery WHERE destination LIKE 'mllp:%%' AND state = 'delivered'"
        ).fetchone()[0]
        reports = conn.execute(
            "SELECT count(DISTINCT study_id) FROM results_fhirresource WHERE resource_type = 'DiagnosticReport' "
            "AND study_id IS NOT NULL"
        ).fetchone()[0]
        per_study = conn.execute(
            "SELECT study_id, count(*) FROM results_fhirresource WHERE resource_type = 'DiagnosticReport' "
            "AND study_id IS NOT NULL GROUP BY study_id HAVING count(*) > 1"
        ).fetchall()
        if per_study:
            problems.append(f"studies with more than one DiagnosticReport: {per_study}")
    for mrn in ledger.acked_messages.values():
        total = site.get(f"/fhir/Patient?identifier={mrn}").get("total")
        if total != 1:
            problems.append(f"Patient {mrn}: {total}")
    for i, pid in enumerate(ledger.acked_bundles.values()):
        for path in (
            f"/fhir/Patient?identifier=urn:faults:patient|{pid}",
            f"/fhir/Observation?identifier=urn:faults:obs|OBS-{i:04d}",
        ):
            total = site.get(path).get("total")
            if total != 1:
                problems.append(f"{path}: {total}")
    # Downstream: one DiagnosticReport per report identity at the upstream FHIR server, and one
    # ORU^R01 message (by MSH-10) per delivered HL7 delivery at the EHR (resends repeat its MSH-10).
    upstream_reports = upstream.state.all("DiagnosticReport")
    identities = Counter(
        "|".join(f"{i.get('system')}|{i.get('value')}" for i in r.get("identifier", []))
        for r in upstream_reports
    )
    dup_upstream = {k: n for k, n in identities.items() if n > 1}
    if dup_upstream:
        problems.append(f"duplicate DiagnosticReports upstream: {dup_upstream}")
    orus = {m.split("\r", 1)[0].split("|")[9] for m in peer.messages if "|ORU^R01" in m.split("\r", 1)[0]}
    if len(orus) != hl7_delivered:
        problems.append(
            f"{len(orus)} distinct ORU^R01 at the EHR for {hl7_delivered} delivered HL7 deliveries"
        )
    for name, count in ledger.refusals.items():
        if name.split(": ", 1)[1] not in OUTAGE_REFUSALS:
            problems.append(f"outage answered outside protocol terms: {name} x{count}")
    summary = {
        "acknowledged": {
            "instances": len(ledger.acked_instances),
            "studies": len(study_uids),
            "hl7 messages": len(ledger.acked_messages),
            "fhir bundles": len(ledger.acked_bundles),
        },
        "lost": len(lost),
        "studies not written back": failed_studies,
        "hl7 messages failed": failed_messages,
        "reports": reports,
        "deliveries": dict(deliveries),
        "upstream DiagnosticReports": len(upstream_reports),
        "distinct ORU^R01 at EHR": len(orus),
        "kills": dict(site.kills),
        "ended on their own and restarted": dict(site.exits),
    }
    assert not problems, f"{problems}\n{summary}"
    return summary


@pytest.mark.skipif(
    pg_bin("initdb") is None, reason="PostgreSQL's server programs (initdb, pg_ctl) not installed"
)
def test_random_faults_lose_nothing_and_duplicate_nothing(tmp_path):
    points = int(os.environ.get("FHIRAI_FAULT_POINTS", "50"))
    seed = int(os.environ.get("FHIRAI_FAULT_SEED", str(random.randrange(1 << 30))))
    print(f"\nfault run: seed {seed} (FHIRAI_FAULT_SEED={seed} replays it), {points} fault points")
    summary = run_faults(tmp_path, points, seed, studies=8, messages=50, bundles=30)
    print("scenarios:", ", ".join(summary["scenarios"]))
    for key, value in summary.items():
        if key != "scenarios":
            print(f"{key}: {value}")
    assert summary["fault_points"] >= points
    assert summary["lost"] == 0
