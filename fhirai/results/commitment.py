"""Storage Commitment for results sent to a PACS (PS3.4 Annex J, Push Model; IHE RAD-10): with
FHIRAI_PACS_COMMITMENT on, each delivery that C-STOREs the SR and key image to a PACS also asks
it, by N-ACTION on the same association, to take responsibility for them. The PACS answers later
with an N-EVENT-REPORT to fhirai's SCP (usually on an association of its own): every object
committed, or some not, with a failure reason each. A delivery whose objects the PACS does not
commit fails visibly (the console's Send again sends them anew); one that gets no answer within
FHIRAI_PACS_COMMITMENT_TIMEOUT is marked so on the study's timeline.

The transaction is recorded before the request goes out, so a report that arrives before the
sender has returned still finds it."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import BytesIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import generate_uid

from fhirai.audit.timeline import Event, record
from fhirai.ingest.models import StudyState
from fhirai.ingest.state import study_fail
from fhirai.results.models import Commitment, CommitmentState, Delivery, DeliveryState
from fhirai.webhooks.events import writeback_failed_emit

log = logging.getLogger(__name__)
# PS3.4 Table J.3-2 Failure Reason
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


def commitment_open(delivery: Delivery, objects: list[bytes]) -> str:
    """A new transaction for the objects this delivery sends ("" when commitment is off)."""
    if not settings.FHIRAI_PACS_COMMITMENT or not objects:
        return ""
    references = []
    for raw in objects:
        ds = dcmread(BytesIO(raw), stop_before_pixels=True)
        references.append([str(ds.SOPClassUID), str(ds.SOPInstanceUID)])
    uid = generate_uid()
    Commitment.objects.create(
        delivery=delivery, transaction_uid=uid, references=references, requested_at=timezone.now()
    )
    return uid


def commitment_sent(transaction_uid: str, *, delivered: bool, answer: str) -> None:
    """What became of the request: dropped with a delivery that did not go through; refused when
    the PACS would not take it (answer says why); else it waits for the PACS's report."""
    if not transaction_uid:
        return
    if not delivered:
        Commitment.objects.filter(transaction_uid=transaction_uid, state=CommitmentState.REQUESTED).delete()
        return
    if answer:  # the N-ACTION was refused: the objects are stored, their commitment is not asked
        with transaction.atomic():
            commitment = Commitment.objects.select_related("delivery").get(transaction_uid=transaction_uid)
            Commitment.objects.filter(pk=commitment.pk, state=CommitmentState.REQUESTED).update(
                state=CommitmentState.REFUSED, detail=answer[:2000], answered_at=timezone.now()
            )
            _timeline(commitment.delivery, Event.SKIPPED, f"storage commitment not accepted: {answer[:300]}")


def commitment_report(
    transaction_uid: str, *, committed: list[str], failed: list[tuple[str, int]], peer: str
) -> bool:
    """The PACS's N-EVENT-REPORT. False when fhirai never asked for this transaction."""
    with transaction.atomic():
        commitment = (
            Commitment.objects.select_for_update(of=("self",))
            .select_related("delivery")
            .filter(transaction_uid=transaction_uid)
            .first()
        )
        if commitment is None:
            log.warning("storage commitment report from %s for an unknown transaction", peer)
            return False
        if commitment.state not in (CommitmentState.REQUESTED, CommitmentState.EXPIRED):
            return True  # a repeated report: already recorded
        asked = {uid for _, uid in commitment.references}
        missing = asked - set(committed) - {uid for uid, _ in failed}
        failures = [[uid, reason] for uid, reason in failed] + [[uid, 0x0112] for uid in sorted(missing)]
        commitment.failed, commitment.answered_at = failures, timezone.now()
        delivery = commitment.delivery
        if not failures:
            commitment.state = CommitmentState.COMMITTED
            commitment.detail = f"{peer} committed {len(asked)} object(s)"
            commitment.save(update_fields=["state", "failed", "answered_at", "detail"])
            _timeline(
                delivery,
                Event.WRITTEN_BACK,
                f"{delivery.destination}: {commitment.detail} (storage commitment)",
            )
            return True
        lines = [f"{uid}: {reason:04X} {FAILURE_REASONS.get(reason, 'failure')}" for uid, reason in failures]
        commitment.state = CommitmentState.FAILED
        commitment.detail = f"{peer} did not commit {len(failures)} of {len(asked)} object(s)"
        commitment.save(update_fields=["state", "failed", "answered_at", "detail"])
        Delivery.objects.filter(pk=delivery.pk).update(
            state=DeliveryState.FAILED, last_response=(commitment.detail + "\n" + "\n".join(lines))[:8000]
        )
        error = f"{delivery.destination}: {commitment.detail} (storage commitment)"
        writeback_failed_emit(delivery, error)  # webhooks: delivery.failed, as any failed delivery
        study_fail(delivery.study_id, error=error, from_states=[StudyState.REPORTED, StudyState.WRITTEN_BACK])
    return True


def commitments_expire() -> int:
    """Requests the PACS has not answered within FHIRAI_PACS_COMMITMENT_TIMEOUT: marked, on the
    study's timeline (the objects were stored; that they are kept is not confirmed)."""
    cutoff = timezone.now() - timedelta(seconds=settings.FHIRAI_PACS_COMMITMENT_TIMEOUT)
    count = 0
    for commitment in Commitment.objects.filter(
        state=CommitmentState.REQUESTED, requested_at__lte=cutoff
    ).select_related("delivery")[:200]:
        with transaction.atomic():
            if Commitment.objects.filter(pk=commitment.pk, state=CommitmentState.REQUESTED).update(
                state=CommitmentState.EXPIRED,
                answered_at=timezone.now(),
                detail="no storage commitment report in time",
            ):
                _timeline(
                    commitment.delivery,
                    Event.FAILED,
                    f"{commitment.delivery.destination}: no storage commitment report within "
                    f"{settings.FHIRAI_PACS_COMMITMENT_TIMEOUT:.0f} s",
                )
                count += 1
    return count


def _timeline(delivery: Delivery, event: Event, detail: str) -> None:
    if delivery.study_id is not None:
        if event == Event.FAILED:
            record("study", delivery.study_id, event, error=detail[:500])
        else:
            record("study", delivery.study_id, event, detail=detail[:1500])
