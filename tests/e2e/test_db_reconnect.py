"""After PostgreSQL drops every connection (a restart or a failover), the running product answers its
next requests normally: each persistent connection is checked before it is reused. Found by the
fault suite, where each web thread's first request after a database restart failed."""

from __future__ import annotations

import psycopg


def _drop_connections(database) -> int:
    """What a database restart does to the product's open connections."""
    with psycopg.connect(database.admin_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [database.name],
        ).fetchone()[0]


def test_requests_after_the_database_dropped_every_connection_are_answered(make_product, database):
    product = make_product(FHIRAI_HTTP_THREADS="4")
    product.start()
    try:
        for _ in range(12):  # every web thread now holds a persistent connection
            assert product.get("/fhir/Patient?_count=1")["resourceType"] == "Bundle"
        assert _drop_connections(database) >= 1
        for _ in range(12):  # each thread's next request finds its connection dead
            assert product.get("/fhir/Patient?_count=1")["resourceType"] == "Bundle"
    finally:
        product.stop()
