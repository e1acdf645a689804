"""The access audit is append-only and tamper-evident: records are inserted unsealed (no lock, so
concurrent requests never queue on one another's commit), `audit_seal` links them into a hash chain
in commit order, `audit_verify` walks it, and on PostgreSQL a trigger refuses every UPDATE but the
sealing, and every DELETE."""

from __future__ import annotations

import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from fhirai.api.access import access_record, audit_seal, audit_verify, login_record
from fhirai.api.auth import Principal
from fhirai.api.models import AccessEvent

OPERATOR = Principal(name="user:op", role="operator", via="session")


def _records(n: int, *, seal: bool = True) -> list[AccessEvent]:
    events = [
        access_record(OPERATOR, "study.view", kind="study", ids=[i], detail="console") for i in range(n)
    ]
    if seal:
        audit_seal()
    return [AccessEvent.objects.get(pk=e.pk) for e in events]


@pytest.mark.django_db
def test_each_record_links_to_the_one_before_and_the_chain_verifies(capsys):
    unsealed = [
        *_records(3, seal=False),
        login_record("login.failed", username="someone", detail="bad password"),
    ]
    assert all(e.hash == "" and e.seq is None for e in unsealed)
    assert audit_seal() == 4 and audit_seal() == 0
    events = [AccessEvent.objects.get(pk=e.pk) for e in unsealed]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[0].prev_hash == "" and all(len(e.hash) == 64 for e in events)
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    check = audit_verify()
    assert check.broken_at is None and check.rows == 4 and check.unsealed == 0
    call_command("audit_verify")
    assert "audit chain intact: 4 access records" in capsys.readouterr().out


@pytest.mark.django_db
def test_verification_seals_what_is_pending_and_later_records_extend_the_chain():
    first = _records(2)
    _records(2, seal=False)
    check = audit_verify()
    assert check.broken_at is None and check.rows == 4
    assert AccessEvent.objects.get(seq=3).prev_hash == first[1].hash


@pytest.mark.django_db
def test_the_database_refuses_changes_and_removals():
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's")
    event = _records(1)[0]
    pending = _records(1, seal=False)[0]
    for change in (
        lambda: AccessEvent.objects.filter(pk=event.pk).update(detail="nothing to see"),
        lambda: AccessEvent.objects.filter(pk=event.pk).delete(),
        # A sealed row cannot be sealed again (re-linked) ...
        lambda: AccessEvent.objects.filter(pk=event.pk).update(seq=99, hash="0" * 64),
        # ... and sealing cannot change what an unsealed row says, nor remove it.
        lambda: AccessEvent.objects.filter(pk=pending.pk).update(seq=2, hash="0" * 64, actor="user:x"),
        lambda: AccessEvent.objects.filter(pk=pending.pk).delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            change()
    assert audit_seal() == 1


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
    if connection.vendor != "postgresql":
        pytest.skip(
            "concurrent writers need PostgreSQL (the test database of SQLite is one shared in-memory file)"
        )

    def append() -> None:
        try:
            _records(10)
        finally:
            connection.close()

    def seal() -> None:
        try:
            for _ in range(20):
                audit_seal(limit=3)
        finally:
            connection.close()

    # Four appenders and two sealers at once: one chain, every record in it once.
    threads = [threading.Thread(target=append) for _ in range(4)] + [
        threading.Thread(target=seal) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check = audit_verify()
    assert check.broken_at is None and check.rows == 40
    assert sorted(AccessEvent.objects.values_list("seq", flat=True)) == list(range(1, 41))


@pytest.mark.django_db(transaction=True)
def test_a_record_committed_late_is_sealed_after_those_committed_before_it():
    if connection.vendor != "postgresql":
        pytest.skip("two open write transactions need PostgreSQL")
    inserted, release = threading.Event(), threading.Event()

    def slow_request() -> None:
        try:
            with transaction.atomic():
                access_record(OPERATOR, "study.view", kind="study", ids=[1], detail="slow")
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_request)
    thread.start()
    assert inserted.wait(10)
    quick = access_record(OPERATOR, "study.view", kind="study", ids=[2], detail="quick")
    assert audit_seal() == 1  # the slow one's row (a lower id) is not visible yet
    release.set()
    thread.join()
    assert audit_seal() == 1
    slow = AccessEvent.objects.get(detail="slow")
    assert slow.pk < quick.pk and slow.seq == 2 and AccessEvent.objects.get(pk=quick.pk).seq == 1
    assert audit_verify().broken_at is None
