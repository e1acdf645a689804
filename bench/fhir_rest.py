"""Requests per second and latency (p50/p99) of fhirai's FHIR R4 REST facade (`manage.py http`,
waitress, on PostgreSQL) against a bare WSGI app on the same waitress settings that does the
equivalent raw work with psycopg on the same PostgreSQL: the most an HTTP + PostgreSQL service in
Python reaches on this machine. Side by side in one run, for three scenarios:

  read         GET /fhir/Patient/{id} of preloaded Patients    | bare: SELECT one JSON row by key
  search       GET /fhir/Patient?identifier=system|value        | bare: SELECT the row by identifier
  transaction  POST /fhir/ a transaction Bundle: Patient (conditional create, ifNoneExist on its
               identifier) + ServiceRequest + Observation referencing it by urn:uuid, unique
               identifiers per Bundle                           | bare: INSERT 3 JSON rows, one transaction

The load generator is one asyncio process with N keep-alive HTTP/1.1 connections (few CPU
cycles per request, the machine has 2 cores); each connection sends its next request when the
previous answer arrived. Every answer is checked (status, and the body: one match for a search,
three "201 Created" for a transaction); a run with errors says so and exits 1."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.product import free_port, port_open  # noqa: E402

SYSTEM = "urn:oid:1.2.3.999"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SCENARIOS = ("read", "search", "transaction")
OTHER_SESSIONS = {"fhirai", "fhirai_dev", "fhirai_h1", "fhirai_h3"}

# The baseline: same waitress settings as `manage.py http`, one psycopg connection per thread,
# JSON in a jsonb column as fhirai keeps it, no framework.
BARE = r"""
import json, sys, threading, uuid
from urllib.parse import parse_qs
import psycopg
from waitress import serve

DSN, PORT, THREADS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
local = threading.local()

def db():
    conn = getattr(local, "conn", None)
    if conn is None or conn.closed:
        conn = local.conn = psycopg.connect(DSN, autocommit=True)
    return conn

def answer(start, status, body):
    start(status, [("Content-Type", "application/fhir+json"), ("Content-Length", str(len(body)))])
    return [body]

def ident(resource):
    for i in resource.get("identifier", []):
        return f"{i.get('system', '')}|{i.get('value', '')}"
    return None

def app(environ, start):
    path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
    if method == "GET" and path.startswith("/r/"):
        row = db().execute(
            "SELECT content::text FROM bare_resource WHERE rtype = 'Patient' AND rid = %s", (path[3:],)
        ).fetchone()
        if row is None:
            return answer(start, "404 Not Found", b'{"resourceType": "OperationOutcome"}')
        return answer(start, "200 OK", row[0].encode())
    if method == "GET" and path == "/s":
        wanted = parse_qs(environ["QUERY_STRING"])["identifier"][0]
        rows = db().execute(
            "SELECT content::text FROM bare_resource WHERE rtype = 'Patient' AND ident = %s", (wanted,)
        ).fetchall()
        entries = ", ".join('{"resource": %s}' % r[0] for r in rows)
        body = '{"resourceType": "Bundle", "type": "searchset", "total": %d, "entry": [%s]}' % (len(rows), entries)
        return answer(start, "200 OK", body.encode())
    if method == "POST" and path == "/tx":
        bundle = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        conn, out = db(), []
        with conn.transaction():
            for entry in bundle["entry"]:
                resource, rid = entry["resource"], uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO bare_resource (rtype, rid, ident, content) VALUES (%s, %s, %s, %s)",
                    (resource["resourceType"], rid, ident(resource), json.dumps({**resource, "id": rid})),
                )
                out.append({"response": {"status": "201 Created", "location": f"{resource['resourceType']}/{rid}/_history/1"}})
        body = {"resourceType": "Bundle", "type": "transaction-response", "entry": out}
        return answer(start, "200 OK", json.dumps(body).encode())
    return answer(start, "404 Not Found", b'{"resourceType": "OperationOutcome"}')

serve(app, host="127.0.0.1", port=PORT, threads=THREADS, ident="bare", clear_untrusted_proxy_headers=True)
"""

# The load generator: raw HTTP/1.1 over asyncio streams, keep-alive, one request in flight per
# connection. Prints one JSON line: completed requests in the measured window, latency
# percentiles, errors, and the CPU the client, the server process and the whole machine used.
LOAD = r"""
import asyncio, json, os, random, sys, time, uuid
cfg = json.loads(sys.argv[1])
PORT, KIND, SCENARIO = cfg["port"], cfg["kind"], cfg["scenario"]
IDS = json.load(open(cfg["ids"]))
HOST = f"127.0.0.1:{PORT}".encode()
SYSTEM, V2 = cfg["system"], "http://terminology.hl7.org/CodeSystem/v2-0203"
READ = "/fhir/Patient/" if KIND == "fhirai" else "/r/"
SEARCH = "/fhir/Patient?identifier=" if KIND == "fhirai" else "/s?identifier="
POST = "/fhir/" if KIND == "fhirai" else "/tx"

AUTH = b"Authorization: Bearer %s\r\n" % cfg["token"].encode() if cfg["token"] else b""

def get(path):
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%sAccept: application/fhir+json\r\n\r\n" % (path.encode(), HOST, AUTH)

def bundle(tag):
    p, s = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    mrn = f"TX-{tag}"
    body = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p, "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{mrn}"},
         "resource": {"resourceType": "Patient",
                      "identifier": [{"type": {"coding": [{"system": V2, "code": "MR"}]}, "system": SYSTEM, "value": mrn}],
                      "name": [{"use": "official", "family": "Load", "given": ["Test"]}],
                      "gender": "female", "birthDate": "1970-01-02"}},
        {"fullUrl": s, "request": {"method": "POST", "url": "ServiceRequest"},
         "resource": {"resourceType": "ServiceRequest",
                      "identifier": [{"type": {"coding": [{"system": V2, "code": "ACSN"}]}, "system": SYSTEM + ".2", "value": f"ACC-{tag}"}],
                      "status": "active", "intent": "order",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}], "text": "CT chest"},
                      "subject": {"reference": p}}},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
                      "subject": {"reference": p}, "basedOn": [{"reference": s}],
                      "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}},
    ]}
    raw = json.dumps(body).encode()
    return (b"POST %s HTTP/1.1\r\nHost: %s\r\n%sAccept: application/fhir+json\r\n"
            b"Content-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n%s") % (POST.encode(), HOST, AUTH, len(raw), raw)

def request(tag):
    if SCENARIO == "read":
        return get(READ + random.choice(IDS)["id"])
    if SCENARIO == "search":
        return get(SEARCH + f"{SYSTEM}%7C{random.choice(IDS)['value']}".replace(":", "%3A"))
    return bundle(tag)

def good(status, body):
    if SCENARIO == "read":
        return status == 200
    if SCENARIO == "search":
        return status == 200 and b'"total": 1,' in body
    return status in (200, 201) and body.count(b'"201 Created"') == 3

async def response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, chunked, close = int(head[9:12]), 0, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if not chunked:
        return status, await reader.readexactly(length), close
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        body += (await reader.readexactly(size + 2))[:-2]
        if size == 0:  # the last chunk; no trailers are expected
            return status, body, close

def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def machine():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")

async def main():
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    begin, end = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    latencies, errors, samples, marks = [], [0], [], {}

    async def connection(n):
        i, reader, writer = 0, None, None
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
                except OSError as exc:
                    errors[0] += 1
                    if len(samples) < 5:
                        samples.append(f"connect: {exc!r}")
                    await asyncio.sleep(0.1)
                    continue
            i += 1
            raw = request(f"{cfg['tag']}-{n}-{i}")
            sent = time.perf_counter()
            try:
                writer.write(raw)
                status, body, close = await response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status, body, close = 0, repr(exc).encode(), True
            done = time.perf_counter()
            if not good(status, body):
                errors[0] += 1
                if len(samples) < 5:
                    samples.append(f"{status} {body[:300].decode(errors='replace')}")
            elif begin <= sent and done <= end:
                latencies.append(done - sent)
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def mark(at, key):
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        marks[key] = (time.perf_counter(), time.process_time(), cpu_of(cfg["server_pid"]), machine())

    tasks = [asyncio.create_task(connection(n)) for n in range(cfg["connections"])]
    await asyncio.gather(mark(begin, "begin"), mark(end, "end"), *tasks)
    (w0, c0, s0, m0), (w1, c1, s1, m1) = marks["begin"], marks["end"]
    lat = sorted(latencies)
    pick = lambda q: 1000 * lat[min(len(lat) - 1, int(len(lat) * q))] if lat else float("nan")
    print(json.dumps({
        "requests": len(lat), "seconds": w1 - w0, "rate": len(lat) / (w1 - w0),
        "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99), "max_ms": 1000 * lat[-1] if lat else float("nan"),
        "errors": errors[0], "error_samples": samples,
        "client_cpu": (c1 - c0) / (w1 - w0), "server_cpu": (s1 - s0) / (w1 - w0),
        "machine_cpu": (m1 - m0) / (w1 - w0), "cores": os.cpu_count(),
    }))

asyncio.run(main())
"""


def load(port: int, server_pid: int, kind: str, scenario: str, ids: Path, args: Any) -> dict[str, Any]:
    cfg = {
        "port": port,
        "server_pid": server_pid,
        "kind": kind,
        "scenario": scenario,
        "ids": str(ids),
        "system": SYSTEM,
        "connections": args.connections,
        "duration": args.duration,
        "warmup": args.warmup,
        "tag": f"{kind}-{uuid.uuid4().hex[:8]}",
        # fhirai as installed: every request carries its API token (checked, and audited).
        "token": args.token if kind == "fhirai" else "",
    }
    done = subprocess.run(
        [sys.executable, "-c", LOAD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=args.duration + args.warmup + 120,
    )
    if done.returncode != 0:
        raise SystemExit(f"load generator failed on {kind} {scenario}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def patient(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": SYSTEM, "value": value}
        ],
        "name": [{"use": "official", "family": f"Bench{value[-4:]}", "given": ["Ann"]}],
        "gender": "female",
        "birthDate": "1970-01-02",
    }


def preload_fhirai(port: int, count: int, token: str) -> list[dict[str, str]]:
    """`count` Patients in transaction Bundles of 50, over 4 connections; their ids and MRNs."""

    def one(start: int) -> list[dict[str, str]]:
        values = [f"PRE-{i:06d}" for i in range(start, min(start + 50, count))]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": patient(v), "request": {"method": "POST", "url": "Patient"}} for v in values
            ],
        }
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request(
                "POST",
                "/fhir/",
                json.dumps(bundle),
                {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token}"},
            )
            reply = conn.getresponse()
            body = reply.read()
        finally:
            conn.close()
        if reply.status != 200:
            raise SystemExit(f"preload failed: {reply.status} {body[:500]!r}")
        locations = [e["response"]["location"] for e in json.loads(body)["entry"]]
        return [{"id": loc.split("/")[1], "value": v} for loc, v in zip(locations, values, strict=True)]

    with ThreadPoolExecutor(4) as pool:
        return [row for rows in pool.map(one, range(0, count, 50)) for row in rows]


def preload_bare(dsn: str, ids: list[dict[str, str]]) -> None:
    """The same Patients, under the same ids, as rows of the baseline's table."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE bare_resource (rtype text NOT NULL, rid text NOT NULL, ident text, "
            "content jsonb NOT NULL, PRIMARY KEY (rtype, rid))"
        )
        conn.execute("CREATE INDEX bare_resource_ident ON bare_resource (ident)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO bare_resource (rtype, rid, ident, content) VALUES ('Patient', %s, %s, %s)",
                [
                    (
                        row["id"],
                        f"{SYSTEM}|{row['value']}",
                        json.dumps(
                            {
                                **patient(row["value"]),
                                "id": row["id"],
                                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00+00:00"},
                            }
                        ),
                    )
                    for row in ids
                ],
            )
        conn.execute("ANALYZE bare_resource")


class Databases:
    """The two databases of one run (fhirai's and the baseline's), created fresh, dropped afterwards."""

    def __init__(self, url: str) -> None:
        server, name = url.rsplit("/", 1)
        if name in OTHER_SESSIONS or "bench" not in name:
            raise SystemExit(f"{name}: this script drops its database; give one whose name contains 'bench'")
        self.admin, self.names = f"{server}/postgres", (name, f"{name}_bare")
        self.fhirai, self.bare = (f"{server}/{n}" for n in self.names)

    def __enter__(self) -> Databases:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')
        return self

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on {port}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="fhirai-bench-fhir-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Databases(args.database_url) as dbs:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_", "DJANGO_"))}
            our_port, bare_port = free_port(), free_port()
            env.update(
                DJANGO_SETTINGS_MODULE="fhirai.settings",
                DATABASE_URL=dbs.fhirai,
                CELERY_BROKER_URL=args.broker_url,
                FHIRAI_HTTP_PORT=str(our_port),
                FHIRAI_HTTP_THREADS=str(args.threads),
                FHIRAI_DATA_DIR=str(workdir / "var"),
                FHIRAI_DEID_SECRET="bench",
                FHIRAI_LOG_LEVEL="WARNING",
            )
            subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
            args.token = subprocess.run(
                [sys.executable, "manage.py", "issue_token", "bench", "--role", "admin"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[-1]
            our_log, bare_log = workdir / "fhirai.log", workdir / "bare.log"
            with open(our_log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "manage.py", "http"], cwd=ROOT, env=env, stdout=out, stderr=out
                    )
                )
            with open(bare_log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", BARE, dbs.bare, str(bare_port), str(args.threads)],
                        stdout=out,
                        stderr=out,
                    )
                )
            ours, bare = procs
            wait(ours, our_port, our_log)
            wait(bare, bare_port, bare_log)
            started = time.perf_counter()
            ids = preload_fhirai(our_port, args.preload, args.token)
            preload_seconds = time.perf_counter() - started
            preload_bare(dbs.bare, ids)
            ids_file = workdir / "ids.json"
            ids_file.write_text(json.dumps(ids))
            results: dict[str, Any] = {}
            for scenario in SCENARIOS:
                b = load(bare_port, bare.pid, "baseline", scenario, ids_file, args)
                o = load(our_port, ours.pid, "fhirai", scenario, ids_file, args)
                results[scenario] = {
                    "baseline": b,
                    "fhirai": o,
                    "ratio": o["rate"] / b["rate"] if b["rate"] else 0,
                }
            for proc in procs:
                if proc.poll() is not None:
                    raise SystemExit(f"a server exited during the run (rc {proc.returncode})")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    errors = sum(r[k]["errors"] for r in results.values() for k in ("baseline", "fhirai"))
    return {
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "waitress_threads": args.threads,
            "preload_patients": args.preload,
            "preload_seconds": round(preload_seconds, 2),
            "cores": os.cpu_count(),
        },
        "scenarios": results,
        "errors": errors,
        "ok": errors == 0,
    }


def report(result: dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"FHIR REST on PostgreSQL: {c['connections']} keep-alive connections, {c['duration_s']:g} s per "
        f"scenario after {c['warmup_s']:g} s warm-up, waitress {c['waitress_threads']} threads on both, "
        f"{c['preload_patients']} preloaded Patients ({c['preload_seconds']:.1f} s to load in Bundles of 50)"
    )
    print(
        f"{'scenario':<22} | {'bare WSGI+PG /s':>15} {'p50 ms':>7} {'p99 ms':>7} | {'fhirai /s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5} | {'errors':>6} | server CPU bare/fhirai"
    )
    labels = {
        "read": "read Patient/{id}",
        "search": "search identifier",
        "transaction": "transaction (Bundles)",
    }
    for scenario, r in result["scenarios"].items():
        b, o = r["baseline"], r["fhirai"]
        print(
            f"{labels[scenario]:<22} | {b['rate']:>15.0f} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f} | "
            f"{o['rate']:>9.0f} {o['p50_ms']:>7.2f} {o['p99_ms']:>7.2f} | {r['ratio']:>5.2f} | "
            f"{b['errors'] + o['errors']:>6} | {b['server_cpu']:.0%} / {o['server_cpu']:.0%}"
        )
    tx = result["scenarios"]["transaction"]
    print(
        f"transaction resources/s (3 per Bundle): bare {3 * tx['baseline']['rate']:.0f}, "
        f"fhirai {3 * tx['fhirai']['rate']:.0f}"
    )
    cpu = [
        (s, k, r[k]["machine_cpu"], r[k]["client_cpu"])
        for s, r in result["scenarios"].items()
        for k in ("baseline", "fhirai")
    ]
    print(
        "machine CPU busy (of "
        + f"{c['cores']} cores) / load generator CPU: "
        + "; ".join(f"{s} {k} {m:.0%}/{cl:.0%}" for s, k, m, cl in cpu)
    )
    if result["errors"]:
        print(f"ERRORS: {result['errors']} responses were wrong; the figures above do not count them:")
        for scenario, r in result["scenarios"].items():
            for kind in ("baseline", "fhirai"):
                for sample in r[kind]["error_samples"]:
                    print(f"  {scenario} {kind}: {sample}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=15.0, help="measured seconds per scenario and server"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="unmeasured seconds first (default: 3, or duration/2)"
    )
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument(
        "--preload", type=int, default=2000, help="Patients loaded before the read and search runs"
    )
    parser.add_argument(
        "--threads", type=int, default=8, help="waitress threads, both servers (FHIRAI_HTTP_THREADS)"
    )
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/fhirai_bench_fhir",
        help="created and dropped by this script (and <name>_bare for the baseline)",
    )
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(3.0, args.duration / 2)
    if args.preload < 1:
        parser.error("--preload must be at least 1")
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
