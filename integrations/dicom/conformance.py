"""The DICOM Conformance Statement (PS3.2 layout) and the IHE Integration Statement, written from
what the SCP really negotiates: the AE that `manage.py run` starts (integrations.dicom.scp), its
presentation contexts, association limits and status codes, and the DICOMweb services. The
published copy (docs/dicom-conformance.md) is checked against this in the tests, so the two cannot
drift; `manage.py dicom_conformance` prints it for a site's own settings."""

from __future__ import annotations

from django.conf import settings
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from fhirai import tls
from fhirai.ingest.sources import dicom_called_titles
from integrations.dicom import qr, scu, status
from integrations.dicom.scp import application_entity

# What fhirai proposes as an SCU: results to a PACS (integrations.dicom.scu, the objects'
# own transfer syntax plus these two), the destination's Test button, priors (integrations.dicom.qr).
SCU_CONTEXTS = (
    ("Comprehensive 3D SR Storage (the TID 1500 result)", Comprehensive3DSRStorage, "PACS write-back"),
    ("Secondary Capture Image Storage (the key image)", SecondaryCaptureImageStorage, "PACS write-back"),
    ("Verification", Verification, "the console's Test button"),
    ("Storage Commitment Push Model", StorageCommitmentPushModel, "PACS write-back (FHIRAI_PACS_COMMITMENT)"),
    ("Study Root Q/R Information Model - FIND", StudyRootQueryRetrieveInformationModelFind, "priors"),
    ("Study Root Q/R Information Model - MOVE", StudyRootQueryRetrieveInformationModelMove, "priors"),
)


def _scu_syntaxes(storage: bool) -> str:
    """What integrations.dicom.scu proposes for an object (its own syntax, and the two little
    endian ones), and pynetdicom's defaults that the other SCU contexts are proposed with."""
    if storage:
        return f"the object's own, {_uid_name(ExplicitVRLittleEndian)}, {_uid_name(ImplicitVRLittleEndian)}"
    return ", ".join(_uid_name(str(t)) for t in DEFAULT_TRANSFER_SYNTAXES)


def _uid_name(uid: str) -> str:
    return UID(uid).name if UID(uid).is_valid else uid


def _transport() -> list[str]:
    """Section 2.4: where the SCP speaks TLS, as configured."""
    if not settings.FHIRAI_DICOM_TLS_CERT:
        where = (
            f"Not configured here: DICOM on port {settings.FHIRAI_DICOM_PORT} is plain TCP. TLS (5.1) is"
            " switched on by FHIRAI_DICOM_TLS_CERT/_KEY: on FHIRAI_DICOM_PORT alone, or on"
            " FHIRAI_DICOM_TLS_PORT (e.g. 2762) beside the plain port."
        )
    elif settings.FHIRAI_DICOM_TLS_PORT:
        where = (
            f"TLS (5.1) on port {settings.FHIRAI_DICOM_TLS_PORT} (FHIRAI_DICOM_TLS_PORT); plain TCP on"
            f" port {settings.FHIRAI_DICOM_PORT} (FHIRAI_DICOM_PORT)."
        )
    else:
        where = f"TLS (5.1) only, on port {settings.FHIRAI_DICOM_PORT} (FHIRAI_DICOM_PORT)."
    mutual = (
        "required, from the CA in FHIRAI_DICOM_TLS_CA"
        if settings.FHIRAI_DICOM_TLS_CA
        else "not asked for unless FHIRAI_DICOM_TLS_CA is set"
    )
    return [
        "- TCP/IP over IPv4 and IPv6 (FHIRAI_BIND_ADDRESS).",
        f"- {where}",
        f"- Client certificates: {mutual}.",
        "- As an SCU, fhirai uses TLS towards the PACS listed in FHIRAI_PACS_TLS"
        + (f" (here: {', '.join(settings.FHIRAI_PACS_TLS)})" if settings.FHIRAI_PACS_TLS else " (none here)")
        + ", verifying the PACS's certificate and host name.",
    ]


def _security_profiles() -> list[str]:
    """Section 5.1 (PS3.2 A.5): the PS3.15 profiles supported, from fhirai.tls."""
    return [
        "### 5.1 Security profiles",
        "",
        "| PS3.15 profile | Supported |",
        "|---|---|",
        "| B.9 BCP 195 TLS Secure Transport Connection Profile | Yes (SCP and SCU) |",
        "| B.10 Non-downgrading BCP 195 TLS Secure Transport Connection Profile | Yes (SCP and SCU) |",
        "| B.11 Extended BCP 195 TLS Profile | No |",
        "| B.1 Basic TLS, B.3 AES TLS (retired) | No: their TLS 1.0 / CBC suites are refused |",
        "| E.1 Basic Application Level Confidentiality Profile (with options) | Yes (de-identified copies) |",
        "",
        f"TLS versions: {tls.MINIMUM_VERSION.name.replace('v', ' ').replace('_', '.')} and TLS 1.3; an offer of anything",
        "older fails the handshake. TLS 1.2 cipher suites, in order of preference (each with ECDHE",
        "key exchange, so forward secrecy, and an AEAD cipher):",
        "",
        *[f"- {iana}" for _, iana in tls.TLS12_SUITES],
        "",
        "TLS 1.3: OpenSSL's suites (all AEAD with ephemeral keys). No TLS compression, no",
        "renegotiation. The server certificate is FHIRAI_DICOM_TLS_CERT; with FHIRAI_DICOM_TLS_CA both",
        "nodes authenticate (mutual TLS). A failed handshake is logged with the peer's address and",
        "OpenSSL's reason, and must finish within the ARTIM timeout; it does not affect other",
        "associations.",
        "",
    ]


def _called_ae_policy() -> list[str]:
    """The called AE title paragraph, which FHIRAI_DICOM_CHECK_CALLED_AE changes."""
    priors = [
        f"- Called AE title {settings.FHIRAI_PRIORS_AE} (FHIRAI_PRIORS_AE) takes only instances of a study",
        "  a prior fetch is moving (else C-STORE status 0124, Refused: Not Authorized).",
    ]
    if not settings.FHIRAI_DICOM_CHECK_CALLED_AE:
        return [
            "- Called AE title: not checked (FHIRAI_DICOM_CHECK_CALLED_AE is off); any title other than",
            f"  {settings.FHIRAI_PRIORS_AE} is fhirai's main AE.",
            *priors,
        ]
    titles = dicom_called_titles()
    return [
        f"- Called AE title: one of {', '.join(titles)} (FHIRAI_DICOM_CHECK_CALLED_AE); any other is",
        "  rejected (rejected-permanent, service-user, called AE title not recognized) and the refusal",
        "  is recorded.",
        *(priors if settings.FHIRAI_PRIORS_AE in titles else []),
    ]


def conformance_statement() -> str:
    ae = application_entity()
    contexts = ae.supported_contexts
    syntaxes = list(contexts[-1].transfer_syntax) if contexts else []
    storage = [c for c in contexts if str(c.abstract_syntax) != "1.2.840.10008.1.1"]
    lines = [
        "# fhirai DICOM Conformance Statement",
        "",
        "Generated from the running configuration by `python manage.py dicom_conformance`; the copy",
        "in docs/ is checked against it by the test suite. Layout after DICOM PS3.2 Annex A.",
        "",
        "## 1 Overview",
        "",
        "fhirai receives DICOM studies (C-STORE SCP and DICOMweb STOW-RS), keeps each instance",
        "durably before answering, de-identifies it, runs AI models on the de-identified copy and",
        "writes results back as FHIR DiagnosticReports (and HL7 ORU). It answers C-ECHO, and serves",
        "what it holds by DICOMweb QIDO-RS and WADO-RS.",
        "",
        "| SOP Classes | User of Service (SCU) | Provider of Service (SCP) |",
        "|---|---|---|",
        "| Verification | Yes | Yes |",
        f"| Storage ({len(storage)} SOP classes, listed in 2.2.2.3) | Comprehensive 3D SR, Secondary Capture | Yes |",
        "| Storage Commitment Push Model | Yes (N-ACTION; N-EVENT-REPORT received) | No |",
        "| Study Root Query/Retrieve - FIND | Yes | No |",
        "| Study Root Query/Retrieve - MOVE | Yes | No |",
        "",
        "## 2 Networking",
        "",
        "### 2.1 Implementation model",
        "",
        f"One Application Entity, **{settings.FHIRAI_DICOM_AE}** (FHIRAI_DICOM_AE), listening on TCP port",
        f"{settings.FHIRAI_DICOM_PORT} (FHIRAI_DICOM_PORT), which also answers as **{settings.FHIRAI_PRIORS_AE}**",
        "(FHIRAI_PRIORS_AE), the move destination for priors. A remote AE sends instances; each is parsed",
        "(header only), written to the blob store with fsync and committed to the database before",
        "the C-STORE response is returned. Pixel data is never decoded or transcoded on receipt: the",
        "instance is kept in the transfer syntax it was sent in.",
        "",
        "### 2.2 AE specifications",
        "",
        "#### 2.2.1 Association policies",
        "",
        "- Application context name: 1.2.840.10008.3.1.1.1 (DICOM Application Context).",
        f"- Maximum PDU size received: {ae.maximum_pdu_size} bytes.",
        f"- Maximum number of simultaneous associations accepted: {ae.maximum_associations}",
        "  (FHIRAI_DICOM_MAX_ASSOCIATIONS); more are rejected (rejected-transient, local limit exceeded).",
        f"- ARTIM, network and DIMSE timeouts: {ae.acse_timeout:.0f} s, {ae.network_timeout:.0f} s, {ae.dimse_timeout:.0f} s.",
        "- Asynchronous operations window: not supported (one operation at a time per association).",
        f"- Implementation Class UID: {ae.implementation_class_uid}; Implementation Version Name:",
        f"  {ae.implementation_version_name}.",
        "",
        "#### 2.2.2 Association acceptance policy",
        "",
        "- Calling AE title: any, unless an allowed list is set (FHIRAI_DICOM_ALLOW, or the console's",
        "  Sources), whose entries are a title (from any address) or a title bound to an IP address or",
        "  network (AE@10.20.0.0/24). A title not on a non-empty list, or on it only for other",
        "  addresses, is rejected (rejected-permanent, service-user, calling AE title not recognized)",
        "  and the refusal is recorded. The calling title is checked before the called title.",
        *_called_ae_policy(),
        "- A presentation context is accepted when its abstract syntax is listed below and one of its",
        "  transfer syntaxes is; the SCP takes the first transfer syntax the requester proposes.",
        "- SCP/SCU role selection: SCP for all listed SOP classes; no extended negotiation.",
        "",
        "##### 2.2.2.1 Transfer syntaxes (every SOP class below)",
        "",
        "| Transfer syntax | UID |",
        "|---|---|",
        *[f"| {_uid_name(str(t))} | {t} |" for t in syntaxes],
        "",
        "##### 2.2.2.2 Verification SOP class",
        "",
        "Verification SOP Class (1.2.840.10008.1.1): C-ECHO is answered with Success (0000).",
        "",
        "##### 2.2.2.3 Storage SOP classes (SCP)",
        "",
        "| SOP class | UID |",
        "|---|---|",
        *[f"| {_uid_name(str(c.abstract_syntax))} | {c.abstract_syntax} |" for c in storage],
        "",
        "Storage SCP conformance: level 2 (full): every element is kept as sent, including private",
        "elements; the stored instance is never modified (de-identification writes a separate copy).",
        "",
        "| C-STORE status | Code | When |",
        "|---|---|---|",
        f"| Success | {status.SUCCESS:04X} | the instance is committed (a resend of a kept instance is a success too) |",
        f"| Refused: Out of Resources | {status.OUT_OF_RESOURCES:04X} | the blob store or database cannot take it now; retry later |",
        f"| Warning: Data Set does not match SOP Class | {status.WARNING_KEPT:04X} | a required UID (Study, Series, SOP Instance, SOP Class) is missing or invalid: the instance is kept (listed as rejected) but not processed |",
        f"| Error: Cannot understand | {status.CANNOT_UNDERSTAND:04X} | the dataset cannot be parsed |",
        f"| Refused: Not Authorized | {status.NOT_AUTHORIZED:04X} | sent to the priors AE title for a study no prior fetch is moving |",
        "",
        "Refused instances are kept for inspection (console: Rejected at the door).",
        "",
        "#### 2.2.3 Association initiation policy (SCU)",
        "",
        f"fhirai initiates associations as **{settings.FHIRAI_DICOM_AE}**, one per task, released when done;",
        f"ARTIM, network and DIMSE timeouts FHIRAI_DICOM_TIMEOUT ({settings.FHIRAI_DICOM_TIMEOUT:.0f} s; a",
        f"C-MOVE waits up to FHIRAI_PRIORS_TIMEOUT, {settings.FHIRAI_PRIORS_TIMEOUT:.0f} s). It proposes only the",
        "contexts a task needs:",
        "",
        "| SOP class | UID | Transfer syntaxes | For |",
        "|---|---|---|---|",
        *[
            f"| {name} | {uid} | {_scu_syntaxes('Storage' in name)} | {why} |"
            for name, uid, why in SCU_CONTEXTS
        ],
        "",
        "- Results to a PACS (FHIRAI_PACS_DESTINATIONS, or a dicom: destination in the console): the",
        "  SR and the key image by C-STORE into the original study, from a durable outbox, retried with",
        f"  backoff. Delivered when each answer is Success or a warning ({', '.join(f'{c:04X}' for c in scu.WARNINGS)});",
        "  a failure status or a permanent association rejection fails the delivery visibly.",
        "- Storage commitment (FHIRAI_PACS_COMMITMENT): after the C-STOREs, N-ACTION Request Storage",
        "  Commitment (Action Type 1, a new Transaction UID, each object's SOP class and instance) on",
        "  the same association, which is then released. The N-EVENT-REPORT is accepted on an",
        "  association the PACS opens to fhirai's SCP (SCP/SCU role selection: the PACS as SCP of",
        "  Storage Commitment Push Model) or, if the PACS keeps it open, the same one: answered 0000",
        "  when recorded, 0112 for a Transaction UID fhirai did not issue, 0110 when it cannot be",
        "  recorded now. Objects in the Failed SOP Sequence, or missing from both sequences, fail the",
        f"  delivery visibly; no report within FHIRAI_PACS_COMMITMENT_TIMEOUT ({settings.FHIRAI_PACS_COMMITMENT_TIMEOUT:.0f} s) is",
        "  marked on the study's timeline. A PACS that does not accept the context or the request:",
        "  the objects count as delivered and the refusal is recorded.",
        "- Priors (a model whose manifest asks for one; FHIRAI_PRIORS_PACS): C-FIND at STUDY level",
        "  (PatientID, StudyDate range; return keys IssuerOfPatientID, StudyInstanceUID, ModalitiesInStudy,",
        "  StudyDescription, checked by fhirai), then at SERIES level for the most recent candidates",
        "  (Modality, BodyPartExamined); C-MOVE at STUDY level of the chosen study to",
        f"  {settings.FHIRAI_PRIORS_AE}. C-MOVE failures answered: "
        + "; ".join(f"{code:04X} {why}" for code, why in qr.MOVE_FAILURES.items())
        + ".",
        "",
        "### 2.3 DICOMweb (PS3.18)",
        "",
        '- STOW-RS `POST /dicomweb/studies[/{study}]`, `multipart/related; type="application/dicom"`;',
        "  Store Instances Response with FailureReason A700, A900 (another study than the URL's),",
        "  C000, C122 per refused part, and WarningReason B007 for a part kept but not processed.",
        "- QIDO-RS studies, series and instances; WADO-RS instances (as stored), metadata, frames",
        "  (decoded to native pixels), rendered PNG.",
        "",
        "### 2.4 Network interfaces",
        "",
        *_transport(),
        "",
        "## 3 Media interchange",
        "",
        "None.",
        "",
        "## 4 Character sets",
        "",
        "Every Specific Character Set pydicom decodes is accepted (ISO_IR 100, ISO_IR 192, ISO 2022",
        "IR 87/149/58 and the others); instances are stored as sent and the attributes fhirai indexes",
        "are decoded with the instance's own character set.",
        "",
        "## 5 Security",
        "",
        "De-identification (PS3.15 Basic Application Level Confidentiality Profile with options) of",
        "every copy that leaves the trusted side; access audit of identified views. Association",
        "access control: the calling AE title allow-list (2.2.2), and with TLS the client certificate.",
        "",
        *_security_profiles(),
        "# IHE Integration Statement",
        "",
        "| Integration profile | Actor | Options |",
        "|---|---|---|",
        "| Scheduled Workflow (SWF.b) | Image Archive (storage part: C-STORE SCP) | none |",
        "| Scheduled Workflow (SWF.b) | Image Display (Query/Retrieve SCU: C-FIND, C-MOVE of priors) | none |",
        "| AI Results (AIR) | Evidence Creator (results as FHIR DiagnosticReport and DICOM SR TID 1500) | none |",
        "| Scheduled Workflow (SWF.b) | Evidence Creator (Storage Commitment RAD-10 for its results) | none |",
        "| Web-based Image Access (WIA) | Image Source (QIDO-RS, WADO-RS), Image Store (STOW-RS) | none |",
        "",
    ]
    return "\n".join(lines)
