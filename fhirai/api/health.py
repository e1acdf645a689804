"""Health for load balancers and operators: the database answers, the broker accepts a
connection, and how many tasks wait on each queue (where the broker can tell cheaply)."""

from __future__ import annotations

from typing import Any

from django.db import connection

from fhirai.celery import app

QUEUES = ("default", "inference")
BROKER_TIMEOUT = 2.0


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable; the type says which
        return f"unavailable: {type(exc).__name__}"
    return "ok"


def broker_check() -> tuple[str, dict[str, int | None]]:
    """("ok" or "unavailable: Error", {queue: depth or None}) without touching the database."""
    depths: dict[str, int | None] = dict.fromkeys(QUEUES)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
            channel = conn.default_channel
            for queue in QUEUES:
                depths[queue] = _depth(channel, queue)
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        return f"unavailable: {type(exc).__name__}", depths
    return "ok", depths


def _depth(channel: Any, queue: str) -> int | None:
    """Messages waiting on `queue`: the broker's answer to a passive declare; on kombu's virtual
    transports (Redis, SQLAlchemy), whose passive declare fails until a worker has bound the queue
    in this key space, the list's own length. None when neither tells."""
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception:  # noqa: BLE001  # nosec B110  # a depth is nice to have, not a health condition; the fallback below answers
        pass
    size = getattr(channel, "_size", None)
    try:
        return int(size(queue)) if size is not None else None
    except Exception:  # noqa: BLE001
        return None


def health_check() -> dict[str, Any]:
    """{status, database, broker, queues}: status is ok when both answer."""
    database = _database()
    broker, queues = broker_check()
    status = "ok" if database == "ok" and broker == "ok" else "unavailable"
    return {"status": status, "database": database, "broker": broker, "queues": queues}
