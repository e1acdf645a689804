"""C-STORE ingest throughput of fhirai against dcmtk's storescp, and fhirai's end-to-end latency.

Both receivers get the same CT studies from the same sender (dcmtk's storescu), one association
per study, with TCP_NODELAY on both sides. storescp writes files and does not fsync; fhirai fsyncs
the blob and commits a database row before each Success (that is its contract). The figure is
images/s for each, and fhirai/storescp as a ratio (plus a bare pynetdicom SCP that does no
work, the floor of the library fhirai's SCP is built on); then the seconds from the last C-STORE to the
DiagnosticReport being served, for each study."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.phantom import ct_phantom  # noqa: E402
from tests.support.product import FreshDatabase, Product, free_port, port_open  # noqa: E402

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def write_studies(base: Path, count: int, slices: int, size: int) -> list[Path]:
    folders = []
    for i in range(count):
        folder = base / f"study{i}"
        folder.mkdir(parents=True)
        for k, raw in enumerate(ct_phantom(slices=slices, size=size, seed=100 + i).files):
            (folder / f"ct{k:04d}.dcm").write_bytes(raw)
        folders.append(folder)
    return folders


def send(folder: Path, port: int, ae: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", ae, "+sd", "127.0.0.1", str(port), str(folder)],
        env=NODELAY,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def bench_storescp(folders: list[Path], workdir: Path) -> list[float]:
    port = free_port()
    out = workdir / "storescp-out"
    out.mkdir()
    argv = ["storescp", "-aet", "STORESCP", "+xa", "-od", str(out), str(port)]
    return send_to_process(argv, port, "STORESCP", folders)


def send_to_process(argv: list[str], port: int, ae: str, folders: list[Path]) -> list[float]:
    """Start a receiver process, send every study to it, stop it; seconds per study."""
    proc = subprocess.Popen(argv, env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not port_open(port):
            time.sleep(0.05)
        return [send(folder, port, ae) for folder in folders]
    finally:
        proc.terminate()
        proc.wait()


BARE_SCP = """
import socket, sys, threading
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

class NoDelay(ThreadedAssociationServer):
    def get_request(self):
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

ae = AE("BARE")
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
server = ae.make_server(("127.0.0.1", int(sys.argv[1])), server_class=NoDelay,
                        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0)])
server.serve_forever()
"""


def bench_bare_pynetdicom(folders: list[Path]) -> list[float]:
    """pynetdicom's own floor: an SCP whose handler answers Success without looking at the data."""
    port = free_port()
    return send_to_process([sys.executable, "-c", BARE_SCP, str(port)], port, "BARE", folders)


def bench_fhirai(folders: list[Path], workdir: Path, env: dict[str, str]) -> tuple[list[float], list[float]]:
    product = Product(workdir / "fhirai-var", env)
    if "DATABASE_URL" in env:
        product.manage("migrate", "--noinput")
    product.start()
    seconds, latency = [], []
    try:
        for i, folder in enumerate(folders):
            seconds.append(send(folder, product.dicom_port, "FHIRAI"))
            sent = time.perf_counter()
            product.wait_for(
                "/fhir/DiagnosticReport?_count=0", lambda b, n=i + 1: b.get("total", 0) >= n, 300
            )
            latency.append(time.perf_counter() - sent)
    finally:
        product.stop()
    return seconds, latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet", type=float, default=5.0, help="FHIRAI_STUDY_QUIET_SECONDS")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--broker-url", default="")
    args = parser.parse_args()
    if not shutil.which("storescp"):
        sys.exit("dcmtk is not installed (apt-get install dcmtk)")
    workdir = Path(tempfile.mkdtemp(prefix="fhirai-bench-"))
    try:
        folders = write_studies(workdir / "in", args.runs, args.slices, args.size)
        mb = sum(f.stat().st_size for f in folders[0].iterdir()) / 1e6
        env = {
            "FHIRAI_STUDY_QUIET_SECONDS": str(args.quiet),
            "FHIRAI_SWEEP_SECONDS": "1",
            "FHIRAI_WORKER_CONCURRENCY": "2",
        }
        if args.broker_url:
            env["CELERY_BROKER_URL"] = args.broker_url
        dcmtk = bench_storescp(folders, workdir)
        bare = bench_bare_pynetdicom(folders)
        if args.database_url:
            with FreshDatabase(args.database_url) as db:
                ours, latency = bench_fhirai(folders, workdir, {**env, "DATABASE_URL": db.url})
        else:
            ours, latency = bench_fhirai(folders, workdir, env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def rate(secs: list[float]) -> float:
        return args.slices / statistics.median(secs)

    broker = f"broker {args.broker_url.split(':')[0]}" if args.broker_url else "embedded broker"
    backend = f"{'PostgreSQL' if args.database_url else 'SQLite'} + {broker}"
    print(
        f"{args.runs} studies x {args.slices} CT slices {args.size}x{args.size} ({mb:.1f} MB each), storescu sender"
    )
    print(f"dcmtk storescp : {rate(dcmtk):7.1f} images/s  (median of {[round(s, 2) for s in dcmtk]} s)")
    print(f"fhirai ({backend}): {rate(ours):7.1f} images/s  (median of {[round(s, 2) for s in ours]} s)")
    print(
        f"bare pynetdicom SCP (no work): {rate(bare):7.1f} images/s  (median of {[round(s, 2) for s in bare]} s)"
    )
    print(
        f"ratio fhirai/storescp: {rate(ours) / rate(dcmtk):.2f}; fhirai/bare pynetdicom: {rate(ours) / rate(bare):.2f}"
    )
    print(
        f"last C-STORE -> DiagnosticReport: median {statistics.median(latency):.1f} s "
        f"(runs {[round(s, 1) for s in latency]}; includes the {args.quiet:.0f} s quiet period)"
    )


if __name__ == "__main__":
    main()
