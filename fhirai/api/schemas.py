"""Typed request and response bodies of the REST API, so the OpenAPI schema is complete. PHI
lives in its own sub-objects (`phi`, `raw`), present only for roles allowed to see it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field, StringConstraints


class ErrorOut(Schema):
    detail: str


class ValidationErrorOut(Schema):
    """422: the request's parameters or body do not fit the schema (each problem listed), or a
    value was refused (one message)."""

    detail: list[dict[str, Any]] | str


class HealthOut(Schema):
    status: str
    database: str
    broker: str
    queues: dict[str, int | None]


class TimelineOut(Schema):
    event: str
    at: datetime
    detail: str
    error: str


class StudyPhiOut(Schema):
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    accession_number: str
    study_uid: str
    study_date: str
    study_description: str


class StudyOut(Schema):
    id: int
    state: str
    state_changed_at: datetime
    revision: int
    error: str
    modalities: str
    body_part: str
    calling_ae: str
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    patient_pseudonym: str
    accession_pseudonym: str
    study_uid_pseudonym: str
    models: list[str]
    phi: StudyPhiOut | None = None


class StudyPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[StudyOut]


class JobOut(Schema):
    id: int
    model: str
    revision: int
    state: str
    attempts: int
    dispatched_at: datetime
    finished_at: datetime | None
    error: str
    prior: str | None = None  # the prior study's fetch, for a model that reads one


class DeliveryOut(Schema):
    id: int
    report: str
    report_version: int
    destination: str
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_response_summary: str
    study_id: int | None
    clinical_report_id: int | None


class StudyDetailOut(StudyOut):
    timeline: list[TimelineOut]
    jobs: list[JobOut]
    reports: list[str]
    deliveries: list[DeliveryOut]


class RetryOut(Schema):
    item: str
    kind: str
    detail: str


class MessageOut(Schema):
    id: int
    message_type: str
    control_id: str
    sender: str
    version: str
    state: str
    enhanced: bool
    app_ack: str
    app_ack_state: str
    app_ack_code: str
    error: str
    received_at: datetime
    processed_at: datetime | None


class MessagePage(Schema):
    count: int
    limit: int
    offset: int
    items: list[MessageOut]


class MessageDetailOut(MessageOut):
    timeline: list[TimelineOut]
    raw: str | None = None


class DeliveryPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[DeliveryOut]


class ModelOut(Schema):
    id: int
    name: str
    version: str
    title: str
    task: str
    format: str
    enabled: bool
    accepts: dict[str, Any]
    priors: dict[str, Any] = {}  # {"max_age_days", "required"} when the model reads a prior study


class ModelAccepts(Schema):
    """What a model is routed: studies by modality, body part or SOP class; reports by message type."""

    model_config = ConfigDict(extra="forbid")
    modalities: list[Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]{1,15}$")]] | None = None
    body_parts: list[Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_]{0,15}$")]] | None = None
    sop_classes: (
        list[
            Annotated[str, StringConstraints(pattern=r"^[0-2](\.(0|[1-9][0-9]{0,8})){1,12}$", max_length=64)]
        ]
        | None
    ) = None
    message_types: (
        list[Annotated[str, StringConstraints(pattern=r"^([A-Z0-9]{3}\^[A-Z0-9]{3}|DiagnosticReport)$")]]
        | None
    ) = None


class ModelPatch(Schema):
    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    accepts: ModelAccepts | None = None


class AccessOut(Schema):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    item_kind: str
    item_ids: list[int]
    detail: str


class DestinationOut(Schema):
    name: str
    kind: str
    address: str
    enabled: bool
    origin: str


PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
HOST = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
PEER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,58}$"


class FhirDestinationIn(Schema):
    """The upstream FHIR server: an http(s) base URL (no query or fragment)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=rf"^https?://{HOST}(:{PORT})?(/[A-Za-z0-9._~-]+)*/?$", max_length=2000)
    enabled: bool = True


class DicomDestinationIn(Schema):
    """A PACS: its AE title (1-16 characters, no backslash, not all spaces), host and port."""

    model_config = ConfigDict(extra="forbid")
    aet: str = Field(pattern=r"^ {0,15}[\x21-\x5B\x5D-\x7E][\x20-\x5B\x5D-\x7E]{0,15}$", max_length=16)
    host: str = Field(pattern=rf"^{HOST}$", max_length=253)
    port: int = Field(ge=1, le=65535)
    enabled: bool = True


class MllpDestinationIn(Schema):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(pattern=rf"^{HOST}$", max_length=253)
    port: int = Field(ge=1, le=65535)
    enabled: bool = True


class WebhookDeliveryOut(Schema):
    id: int
    subscription: str
    event_type: str
    message_id: str
    state: str
    attempts: int
    last_status: int | None
    created_at: datetime


class ReportOut(Schema):
    id: int
    resource: str
    resource_version: int
    status: str
    state: str
    deidentified: bool
    received_at: datetime
    patient_pseudonym: str


class ReportPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[ReportOut]


class ReportDetailOut(ReportOut):
    timeline: list[TimelineOut]
    jobs: list[JobOut]
    deliveries: list[DeliveryOut]


class RejectionOut(Schema):
    id: int
    protocol: str
    peer: str
    code: str
    detail: str
    kept: bool
    received_at: datetime


class RejectionPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[RejectionOut]


class SourceRuleOut(Schema):
    id: int
    kind: str
    value: str
    note: str
    created_by: str


OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"


# An AE title here: 1-16 characters of the default repertoire, no backslash, no `@` (which starts
# the address), not starting or ending in a space (padding around it is dropped).
AE_CHAR = r"[\x21-\x3F\x41-\x5B\x5D-\x7E]"
AE_TITLE = rf"{AE_CHAR}(?:[\x20-\x3F\x41-\x5B\x5D-\x7E]{{0,14}}{AE_CHAR})?"
IPV4_NETWORK = rf"{OCTET}(\.{OCTET}){{3}}(/(3[0-2]|[12]?[0-9]))?"


class DicomSourceIn(Schema):
    """A calling AE title, alone or pinned to the IPv4 address or network it may come from
    (`CT_1@10.20.1.15`, `PACS@10.20.0.0/24`); the console and FHIRAI_DICOM_ALLOW also take IPv6."""

    model_config = ConfigDict(extra="forbid")
    value: str = Field(pattern=rf"^ *{AE_TITLE} *(@ *{IPV4_NETWORK} *)?$", max_length=64)
    note: str = Field("", max_length=200)


class MllpSourceIn(Schema):
    """An IPv4 address or network (the console also takes IPv6)."""

    model_config = ConfigDict(extra="forbid")
    value: str = Field(pattern=rf"^{IPV4_NETWORK}$")
    note: str = Field("", max_length=200)


class OptOutIn(Schema):
    """A patient on the site's opt-out list: the MRN (PID-3.1 / PatientID), optionally its assigning
    authority (PID-3.4 / IssuerOfPatientID); `active` false takes the patient off the list."""

    model_config = ConfigDict(extra="forbid")
    mrn: str = Field(pattern=r"^[^\x00-\x1f\\^|~&]{1,64}$")
    authority: str = Field("", pattern=r"^[^\x00-\x1f\\^|~&]{0,64}$")
    active: bool = True
    note: str = Field("", max_length=200)


class OptOutOut(Schema):
    id: int
    mrn: str
    mrn_system: str
    source: str
    active: bool
    reference: str
    note: str
    updated_at: datetime


EventName = Literal["report.created", "item.failed", "item.completed", "delivery.failed"]
SUBSCRIPTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
FilterValue = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.^-]+$")]


class SubscriptionFilter(Schema):
    """Every key given must match the event: a model name, a source (AE title, sender)."""

    model_config = ConfigDict(extra="forbid")
    model: FilterValue | list[FilterValue] | None = None
    source: FilterValue | list[FilterValue] | None = None


# What Django's URLValidator accepts as a host, said as a pattern: localhost, an IPv4 address, or a
# domain name with a top-level domain.
WEB_HOST = (
    rf"(localhost|{OCTET}(\.{OCTET}){{3}}|([A-Za-z0-9]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+[A-Za-z]{{2,63}})"
)


class SubscriptionIn(Schema):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=rf"^https?://{WEB_HOST}(:{PORT})?(/[A-Za-z0-9._~-]+)*/?$", max_length=2000)
    events: list[EventName] = Field(min_length=1)
    filter: SubscriptionFilter = Field(default_factory=SubscriptionFilter)
    include_phi: bool = False
    enabled: bool = True


class SubscriptionOut(Schema):
    id: int
    name: str
    url: str
    events: list[str]
    filter: dict[str, Any]
    include_phi: bool
    enabled: bool
    secret: str
