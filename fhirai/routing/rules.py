"""Which registered, enabled model gets which study, and which of its instances it reads.

A model's `accepts` record names modalities, body parts (BodyPartExamined) and description
keywords, and optionally SOP classes; a study matches when its modality is accepted and either its
body part or its study description names one of the accepted regions. The model reads one series:
the largest series of an accepted modality and SOP class (localizers and dose screens are small
series of their own). NLP models accept HL7 message types instead and read clinical reports."""

from __future__ import annotations

from collections import Counter

from fhirai.ingest.models import Instance, Study
from fhirai.routing.models import ModelRecord

WITHHELD = "-"  # deid_blob_key of an instance de-identification withheld (burned-in text)


def study_models(study: Study) -> list[ModelRecord]:
    """The enabled image models that accept this study."""
    return [
        m
        for m in ModelRecord.objects.filter(enabled=True).exclude(task="nlp").order_by("name", "version")
        if _accepts(m, study) and model_inputs(m, study)
    ]


def report_models(message_type: str) -> list[ModelRecord]:
    """The enabled NLP models that read reports carried by this message type: an accepted type
    matches exactly (ORU^R01) or by its message code alone (ORU); "DiagnosticReport" stands for
    reports written to /fhir/ or notified by an EHR's Subscription."""
    code = message_type.split("^")[0].upper()
    return [
        m
        for m in ModelRecord.objects.filter(enabled=True, task="nlp").order_by("name", "version")
        if any(t.upper() in (message_type.upper(), code) for t in (m.accepts or {}).get("message_types", []))
    ]


def _accepts(model: ModelRecord, study: Study) -> bool:
    accepts = model.accepts or {}
    modalities = {m.upper() for m in accepts.get("modalities", [])}
    if modalities and not modalities & {m.upper() for m in study.modalities.split(",") if m}:
        return False
    regions = [r.upper() for r in accepts.get("body_parts", [])]
    if not regions:
        return True
    text = f"{study.body_part} {study.study_description}".upper()
    return any(region in text for region in regions)


def _sop_accepted(model: ModelRecord, instance: Instance) -> bool:
    sop_classes = (model.accepts or {}).get("sop_classes", [])
    return not sop_classes or instance.sop_class_uid in sop_classes


def model_inputs(model: ModelRecord, study: Study) -> list[Instance]:
    """The de-identified instances of the series the model reads (largest accepted series)."""
    modalities = {m.upper() for m in (model.accepts or {}).get("modalities", [])}
    instances = [
        i
        for i in study.instances.exclude(deid_blob_key__in=("", WITHHELD)).order_by("id")
        if (not modalities or i.modality.upper() in modalities) and _sop_accepted(model, i)
    ]
    if not instances:
        return []
    series, _ = Counter(i.series_uid for i in instances).most_common(1)[0]
    return [i for i in instances if i.series_uid == series]
