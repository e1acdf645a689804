"""The access audit is append-only and tamper-evident: a hash chain that `audit_verify` walks, and on
PostgreSQL a trigger that refuses UPDATE and DELETE."""

from __future__ import annotations

import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from fhirai.api.access import access_record, audit_verify, login_record
from fhirai.api.auth import Principal
from fhirai.api.models import AccessEvent

OPERATOR = Principal(name="user:op", role="operator", via="session")


def _records(n: int) -> list[AccessEvent]:
    return [access_record(OPERATOR, "study.view", kind="study", ids=[i], detail="console") for i in range(n)]


@pytest.mark.django_db
def test_each_record_links_to_the_one_before_and_the_chain_verifies(capsys):
    events = [*_records(3), login_record("login.failed", username="someone", detail="bad password")]
    assert events[0].prev_hash == "" and all(len(e.hash) == 64 for e in events)
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    check = audit_verify()
    assert check.broken_at is None and check.rows == 4
    call_command("audit_verify")
    assert "audit chain intact: 4 access records" in capsys.readouterr().out


@pytest.mark.django_db
def test_the_database_refuses_changes_and_removals():
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's")
    event = _records(1)[0]
    for change in (
        lambda: AccessEvent.objects.filter(pk=event.pk).update(detail="nothing to see"),
        lambda: AccessEvent.objects.filter(pk=event.pk).delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            change()


def _tamper(sql: str, params: list[object]) -> None:
    """What someone with the database's owner rights could do: switch the trigger off and edit."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE api_accessevent DISABLE TRIGGER access_append_only")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE api_accessevent ENABLE TRIGGER access_append_only")


@pytest.mark.django_db
def test_a_changed_row_is_found():
    events = _records(4)
    _tamper("UPDATE api_accessevent SET actor = %s WHERE id = %s", ["user:someone-else", events[2].pk])
    check = audit_verify()
    assert check.broken_at == events[2].pk and "changed" in check.reason
    with pytest.raises(CommandError, match=f"broken at access record {events[2].pk}"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_a_removed_row_is_found():
    events = _records(4)
    _tamper("DELETE FROM api_accessevent WHERE id = %s", [events[1].pk])
    check = audit_verify()
    assert check.broken_at == events[2].pk and "removed" in check.reason


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_one_chain():
    def append() -> None:
        try:
            _records(10)
        finally:
            connection.close()

    threads = [threading.Thread(target=append) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check = audit_verify()
    assert check.broken_at is None and check.rows == 40
