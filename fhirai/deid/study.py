"""The de-identification stage of a study: every instance through the PS3.15 profile into the
`deid` blob area, the pseudonyms into the vault, then routing. Safe to run twice."""

from __future__ import annotations

import logging

from django.db import transaction

from fhirai import blobs
from fhirai.audit.timeline import Event, record
from fhirai.deid.pixels import Withheld
from fhirai.deid.profile import accession_pseudonym, dataset_deidentify, patient_pseudonym, profile_current
from fhirai.deid.pseudonym import uid_remap
from fhirai.deid.vault import vault_put
from fhirai.ingest.models import Instance, Study, StudyState
from fhirai.ingest.state import study_fail, study_transition
from fhirai.routing.jobs import study_route
from fhirai.routing.rules import WITHHELD

log = logging.getLogger(__name__)


def study_deidentify(study_id: int) -> None:
    """De-identify a complete study and hand it to routing. Does nothing unless the study is
    complete (a late instance may have reopened it; another worker may have finished it)."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None or study.state != StudyState.COMPLETE:
        return
    revision = study.revision
    profile = profile_current()
    done = 0
    for instance in study.instances.filter(deid_blob_key="").order_by("id"):
        try:
            deid, _ = dataset_deidentify(
                blobs.get(instance.blob_key), issuer=study.issuer_of_patient_id, profile=profile
            )
        except Withheld as reason:
            Instance.objects.filter(pk=instance.pk).update(deid_blob_key=WITHHELD)
            record("study", study_id, Event.SKIPPED, detail=f"instance {instance.pk} withheld: {reason}")
            continue
        except (ValueError, KeyError, TypeError, EOFError, AttributeError) as exc:
            study_fail(
                study_id,
                error=f"instance {instance.pk} could not be de-identified: {type(exc).__name__}",
                from_states=[StudyState.COMPLETE],
            )
            return
        key = blobs.put(deid, area="deid")
        Instance.objects.filter(pk=instance.pk).update(deid_blob_key=key)
        done += 1
    patient = patient_pseudonym(study.patient_id, study.issuer_of_patient_id)
    study_pseudo = uid_remap(study.study_uid)
    with transaction.atomic():
        vault_put(
            "patient-id", pseudonym=patient, original=f"{study.issuer_of_patient_id}\x1f{study.patient_id}"
        )
        vault_put("study-uid", pseudonym=study_pseudo, original=study.study_uid)
        if study.accession_number:
            vault_put(
                "accession",
                pseudonym=accession_pseudonym(study.accession_number),
                original=study.accession_number,
            )
        moved = study_transition(
            study_id,
            from_states=[StudyState.COMPLETE],
            to=StudyState.DEIDENTIFIED,
            event=Event.DEIDENTIFIED,
            detail=f"{profile.label}; {done} instances",
            revision=revision,
        )
    if moved:
        study_route(study_id)  # the next stage in the same worker: no queue hop
