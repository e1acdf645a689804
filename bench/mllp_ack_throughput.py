"""ACKed HL7 messages per second and ACK latency (p50/p99) of fhirai's MLLP listener against a
bare asyncio MLLP server that commits each message to PostgreSQL before answering (the limit a
listener with the same durability can reach), over 1 and 8 connections, side by side in one run.

Both store every message in PostgreSQL before its ACK leaves. fhirai runs `manage.py mllp` (MSH
checks, dedupe on sender + control ID, timeline rows, a processing task queued on Redis per batch;
no worker runs, so processing does not compete for the 2 cores). The load generator is a separate
process: each connection sends the next message when the previous ACK arrived (as engines do)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.product import FreshDatabase, free_port, port_open  # noqa: E402

BARE = r"""
import asyncio, sys, psycopg
DSN, PORT = sys.argv[1], int(sys.argv[2])
ACK = b"\x0bMSH|^~\\&|BARE||||20260101||ACK|1|P|2.5.1\rMSA|AA|%s\r\x1c\r"

async def client(reader, writer):
    conn = await psycopg.AsyncConnection.connect(DSN)
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            buf += data
            while b"\x1c\r" in buf:
                frame, buf = buf.split(b"\x1c\r", 1)
                frame = frame[frame.index(b"\x0b") + 1:]
                control = frame.split(b"\r", 1)[0].split(b"|")[9]
                async with conn.transaction():
                    await conn.execute("INSERT INTO bare_message (control_id, raw) VALUES (%s, %s)", (control, frame))
                writer.write(ACK % control)
                await writer.drain()
    finally:
        await conn.close()
        writer.close()

async def main():
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bare_message (id bigserial primary key, control_id bytea, raw bytea)")
    server = await asyncio.start_server(client, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

LOAD = r"""
import asyncio, json, sys, time
PORT, CONNS, PER = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
TEMPLATE = ("MSH|^~\\&|ENGINE|HOSP|FHIRAI|HOSP|20260315083000||ADT^A08^ADT_A01|{cid}|P|2.5.1\r"
            "EVN|A08|20260315083000\rPID|1||MRN-{cid}^^^HOSP^MR||Load^Test||19700101|F\rPV1|1|O\r")

async def one(conn_no, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    for i in range(PER):
        cid = f"{sys.argv[4]}-{conn_no}-{i}"
        start = time.perf_counter()
        writer.write(b"\x0b" + TEMPLATE.format(cid=cid).encode() + b"\x1c\r")
        await writer.drain()
        reply = await reader.readuntil(b"\x1c\r")
        latencies.append(time.perf_counter() - start)
        assert b"MSA|AA|" in reply or b"MSA|CA|" in reply, reply
    writer.close()

async def main():
    latencies = []
    start = time.perf_counter()
    await asyncio.gather(*(one(c, latencies) for c in range(CONNS)))
    print(json.dumps({"seconds": time.perf_counter() - start, "latencies": latencies}))

asyncio.run(main())
"""


def load(port: int, conns: int, per: int, tag: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(port), str(conns), str(per), tag],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(out.stdout)
    lat = sorted(result["latencies"])
    return {
        "rate": len(lat) / result["seconds"],
        "p50": 1000 * lat[len(lat) // 2],
        "p99": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def wait(port: int) -> None:
    deadline = time.monotonic() + 60
    while not port_open(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on {port}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--messages", type=int, default=4000, help="messages per run (split over the connections)"
    )
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/fhirai_bench")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; medians are printed")
    parser.add_argument("--committers", type=int, default=0, help="FHIRAI_MLLP_COMMITTERS (0: the default)")
    args = parser.parse_args()
    rows = []
    with FreshDatabase(args.database_url) as bare_db, FreshDatabase(args.database_url) as our_db:
        bare_port, our_port = free_port(), free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, bare_db.url, str(bare_port)])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_", "DJANGO_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="fhirai.settings",
            DATABASE_URL=our_db.url,
            CELERY_BROKER_URL=args.broker_url,
            FHIRAI_MLLP_PORT=str(our_port),
            FHIRAI_LOG_LEVEL="WARNING",
            FHIRAI_DATA_DIR=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"fhirai-bench-{our_port}"),
        )
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        ours = subprocess.Popen([sys.executable, "manage.py", "mllp"], cwd=ROOT, env=env)
        try:
            wait(bare_port)
            wait(our_port)
            for conns in (1, 8):
                per = args.messages // conns
                load(bare_port, conns, 50, f"warm{conns}")
                load(our_port, conns, 50, f"warm{conns}")
                runs = [
                    (
                        load(bare_port, conns, per, f"b{conns}-{r}"),
                        load(our_port, conns, per, f"o{conns}-{r}"),
                    )
                    for r in range(args.repeat)
                ]
                rows.append((conns, _median([b for b, _ in runs]), _median([o for _, o in runs])))
        finally:
            for proc in (bare, ours):
                proc.terminate()
                proc.wait(30)
    print(
        f"{args.messages} ADT^A08 per run, each committed to PostgreSQL before its ACK; loader waits for each ACK"
    )
    print(
        f"{'conns':>5} | {'bare asyncio+PG msg/s':>21} {'p50 ms':>7} {'p99 ms':>7} | {'fhirai msg/s':>12} "
        f"{'p50 ms':>7} {'p99 ms':>7} | ratio"
    )
    for conns, b, o in rows:
        print(
            f"{conns:>5} | {b['rate']:>21.0f} {b['p50']:>7.2f} {b['p99']:>7.2f} | {o['rate']:>12.0f} "
            f"{o['p50']:>7.2f} {o['p99']:>7.2f} | {o['rate'] / b['rate']:.2f}"
        )


if __name__ == "__main__":
    main()
