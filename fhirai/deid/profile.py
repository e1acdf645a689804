"""DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile on headers.

Actions (PS3.15 Table E.1-1): D replace with a dummy, Z zero length or dummy, X remove,
K keep, U replace UID consistently. Where the table allows a choice (X/Z, X/D, X/Z/D) we take
the stricter one, X. Beyond the named attributes, three catch-alls keep PHI out of what the
inference tier sees: private tags are removed (E.3.10 not claimed), every UID that is not one
of DICOM's own is remapped consistently, and every other Person Name is removed. Sequences are
walked recursively. The identifying values we replace (patient, accession, UIDs) become keyed
pseudonyms, so studies of one patient stay linkable at this site and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO

from django.conf import settings
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from fhirai.deid.pixels import Withheld, at_risk, pixels_clean
from fhirai.deid.pseudonym import hmac_int, pseudonym, uid_remap
from fhirai.deid.text import Known, text_scrub

PROFILE_NAME = "PS3.15 E.1 Basic Application Level Confidentiality Profile"  # the base of every profile
# PS3.16 CID 7050 De-identification Method: 113100 Basic Application Confidentiality Profile.
METHOD_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

_TABLE = """
AccessionNumber Z; AcquisitionComments X; AcquisitionContextSequence X; AcquisitionDate X;
AcquisitionDateTime X; AcquisitionDeviceProcessingDescription X; AcquisitionProtocolDescription X;
AcquisitionTime X; ActualHumanPerformersSequence X; AdditionalPatientHistory X; AdmissionID X;
AdmittingDate X; AdmittingDiagnosesCodeSequence X; AdmittingDiagnosesDescription X; AdmittingTime X;
AffectedSOPInstanceUID X; Allergies X; AuthorObserverSequence X; BranchOfService X; CassetteID X;
CommentsOnThePerformedProcedureStep X; ConcatenationUID U;
ConfidentialityConstraintOnPatientDataDescription X;
ContentCreatorName Z; ContentCreatorIdentificationCodeSequence X; ContentDate Z; ContentTime Z;
ContentSequence X; ContributionDescription X; CountryOfResidence X; CurrentPatientLocation X;
DataSetTrailingPadding X; DerivationDescription X; DetectorID X; DeviceSerialNumber X; DeviceUID U;
DigitalSignaturesSequence X; DimensionOrganizationUID U; DischargeDiagnosisDescription X;
DistributionAddress X; DistributionName X; DoseReferenceUID U; EthnicGroup X;
FailedSOPInstanceUIDList U; FiducialUID U; FillerOrderNumberImagingServiceRequest Z; FrameComments X;
FrameOfReferenceUID U; GantryID X; GeneratorID X; HumanPerformerName X; HumanPerformerOrganization X;
IconImageSequence X; IdentifyingComments X; ImageComments X; ImagePresentationComments X;
ImagingServiceRequestComments X; Impressions X; InstanceCreationDate X; InstanceCreationTime X;
InstanceCreatorUID U; InstitutionAddress X; InstitutionalDepartmentName X; InstitutionCodeSequence X;
InstitutionName X; InsurancePlanIdentification X; IntendedRecipientsOfResultsIdentificationSequence X;
InterpretationApproverSequence X; InterpretationAuthor X; InterpretationDiagnosisDescription X;
InterpretationIDIssuer X; InterpretationRecorder X; InterpretationText X; InterpretationTranscriber X;
IrradiationEventUID U; IssuerOfAdmissionID X; IssuerOfPatientID X; IssuerOfServiceEpisodeID X;
LargePaletteColorLookupTableUID U; MAC X; MediaStorageSOPInstanceUID U; MedicalAlerts X;
MedicalRecordLocator X; MilitaryRank X; ModifiedAttributesSequence X; ModifiedImageDescription X;
ModifyingDeviceID X; ModifyingDeviceManufacturer X; NameOfPhysiciansReadingStudy X;
NamesOfIntendedRecipientsOfResults X; Occupation X; OperatorIdentificationSequence X; OperatorsName X;
OriginalAttributesSequence X; OrderCallbackPhoneNumber X; OrderEnteredBy X; OrderEntererLocation X;
OtherPatientIDs X; OtherPatientIDsSequence X; OtherPatientNames X; ParticipantSequence X;
PatientAddress X; PatientAge X; PatientBirthDate Z; PatientBirthName X; PatientBirthTime X;
PatientComments X; PatientID Z; PatientInsurancePlanCodeSequence X; PatientMotherBirthName X;
PatientName Z; PatientPrimaryLanguageCodeSequence X; PatientPrimaryLanguageModifierCodeSequence X;
PatientReligiousPreference X; PatientSex Z; PatientSexNeutered X; PatientSize X; PatientState X;
PatientTelephoneNumbers X; PatientTransportArrangements X; PatientWeight X; PerformedLocation X;
PerformedProcedureStepDescription X; PerformedProcedureStepEndDate X; PerformedProcedureStepEndTime X;
PerformedProcedureStepID X; PerformedProcedureStepStartDate X; PerformedProcedureStepStartTime X;
PerformingPhysicianIdentificationSequence X; PerformingPhysicianName X; PersonAddress X;
PersonIdentificationCodeSequence X; PersonName X; PersonTelephoneNumbers X;
PhysicianApprovingInterpretation X; PhysiciansOfRecord X; PhysiciansOfRecordIdentificationSequence X;
PhysiciansReadingStudyIdentificationSequence X; PlacerOrderNumberImagingServiceRequest Z; PlateID X;
PreMedication X; PregnancyStatus X; ProtocolName X; ReasonForStudy X;
ReasonForTheImagingServiceRequest X; ReferencedDigitalSignatureSequence X;
ReferencedPatientAliasSequence X; ReferencedPatientSequence X;
ReferencedPerformedProcedureStepSequence X; ReferencedSOPInstanceMACSequence X;
ReferencedStudySequence X; ReferringPhysicianAddress X; ReferringPhysicianIdentificationSequence X;
ReferringPhysicianName Z; ReferringPhysicianTelephoneNumbers X; RegionOfResidence X;
RequestAttributesSequence X; RequestedContrastAgent X; RequestedProcedureComments X;
RequestedProcedureDescription X; RequestedProcedureID X; RequestedProcedureLocation X;
RequestingPhysician X; RequestingService X; ResponsibleOrganization X; ResponsiblePerson X;
ResultsComments X; ResultsDistributionListSequence X; ResultsIDIssuer X; ReviewerName X;
ScheduledHumanPerformersSequence X; ScheduledPatientInstitutionResidence X;
ScheduledPerformingPhysicianIdentificationSequence X; ScheduledPerformingPhysicianName X;
ScheduledProcedureStepDescription X; ScheduledProcedureStepEndDate X; ScheduledProcedureStepEndTime X;
ScheduledProcedureStepID X; ScheduledProcedureStepLocation X; ScheduledProcedureStepStartDate X;
ScheduledProcedureStepStartTime X; ScheduledStationAETitle X;
ScheduledStationGeographicLocationCodeSequence X;
ScheduledStationName X; ScheduledStationNameCodeSequence X; ScheduledStudyLocation X;
ScheduledStudyLocationAETitle X; SeriesDate X; SeriesDescription X; SeriesTime X; ServiceEpisodeDescription X;
ServiceEpisodeID X; SmokingStatus X; SourceApplicationEntityTitle X; SpecialNeeds X; StationName X;
StorageMediaFileSetUID U; StudyComments X; StudyDate Z; StudyDescription X; StudyID Z; StudyIDIssuer X;
StudyTime Z; SynchronizationFrameOfReferenceUID U; TemplateExtensionCreatorUID U;
TemplateExtensionOrganizationUID U; TextComments X; TextString X; TimezoneOffsetFromUTC X; TopicAuthor X;
TopicKeywords X; TopicSubject X; TopicTitle X; TransactionUID U;
VerifyingObserverIdentificationCodeSequence X;
VerifyingObserverName X; VerifyingObserverSequence X; VerifyingOrganization X; VisitComments X;
PatientIdentityRemoved K; DeidentificationMethod K; DeidentificationMethodCodeSequence K
"""
ACTIONS: dict[str, str] = dict(
    entry.split() for entry in _TABLE.replace("\n", " ").split(";") if entry.strip()
)
# Z attributes that carry a consistent pseudonym instead of an empty value (D allowed by E.1-1).
PSEUDONYMIZED = {"PatientID": "patient-id", "PatientName": "patient-id", "AccessionNumber": "accession"}
_OVERLAY_DROP = {0x3000, 0x4000}  # (60xx,3000) Overlay Data, (60xx,4000) Overlay Comments: X

# The PS3.15 E.3 options: per option, the attributes whose action changes (K keep, C clean: free
# text through fhirai.deid.text, dates shifted), and its CID 7050 code.
_PATIENT_CHARACTERISTICS = {
    "PatientAge": "K", "PatientSex": "K", "PatientSexNeutered": "K", "PatientSize": "K",
    "PatientWeight": "K", "EthnicGroup": "K", "SmokingStatus": "K", "PregnancyStatus": "K",
    "Allergies": "C", "MedicalAlerts": "C", "AdditionalPatientHistory": "C", "PatientState": "C",
    "PreMedication": "C", "SpecialNeeds": "C",
}  # fmt: skip
_DESCRIPTORS = {
    "StudyDescription": "C", "SeriesDescription": "C", "ProtocolName": "C", "ImageComments": "C",
    "AcquisitionComments": "C", "AcquisitionProtocolDescription": "C", "AdditionalPatientHistory": "C",
    "DerivationDescription": "C", "FrameComments": "C", "ImagePresentationComments": "C",
    "PerformedProcedureStepDescription": "C", "ReasonForStudy": "C",
    "RequestedProcedureDescription": "C", "RequestedProcedureComments": "C",
    "ScheduledProcedureStepDescription": "C", "StudyComments": "C", "VisitComments": "C",
    "ImagingServiceRequestComments": "C", "CommentsOnThePerformedProcedureStep": "C",
    "ReasonForTheImagingServiceRequest": "C", "IdentifyingComments": "C", "TextComments": "C",
}  # fmt: skip
_DEVICE_IDENTITY = {
    "DeviceSerialNumber": "K", "DetectorID": "K", "GantryID": "K", "GeneratorID": "K",
    "StationName": "K", "CassetteID": "K", "PlateID": "K", "DeviceUID": "K", "ModifyingDeviceID": "K",
    "ModifyingDeviceManufacturer": "K", "ScheduledStationName": "K", "SourceApplicationEntityTitle": "K",
}  # fmt: skip
_INSTITUTION_IDENTITY = {
    "InstitutionName": "K", "InstitutionAddress": "K", "InstitutionalDepartmentName": "K",
    "InstitutionCodeSequence": "K",
}  # fmt: skip
OPTIONS: dict[str, tuple[dict[str, str], tuple[str, str]]] = {
    "retain-patient-characteristics": (_PATIENT_CHARACTERISTICS, ("113108", "Retain Patient Characteristics Option")),
    "retain-longitudinal-modified-dates": ({}, ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")),
    "clean-descriptors": (_DESCRIPTORS, ("113105", "Clean Descriptors Option")),
    "retain-uids": ({}, ("113110", "Retain UIDs Option")),
    "retain-device-identity": (_DEVICE_IDENTITY, ("113109", "Retain Device Identity Option")),
    "retain-institution-identity": (_INSTITUTION_IDENTITY, ("113112", "Retain Institution Identity Option")),
    "retain-safe-private": ({}, ("113111", "Retain Safe Private Option")),
    "clean-pixel-data": ({}, ("113101", "Clean Pixel Data Option")),
}  # fmt: skip
DATE_SHIFT_DAYS = 3650  # modified dates move back 1..3650 days, the same for every study of a patient


@dataclass(frozen=True)
class DeidProfile:
    """A named, versioned profile: PS3.15 Basic plus options (OPTIONS) and a private safelist."""

    name: str = "basic"
    version: str = "1"
    options: frozenset[str] = frozenset()
    private_safelist: frozenset[tuple[str, int, int]] = frozenset()  # (creator, group, element byte)

    def __post_init__(self) -> None:
        unknown = self.options - OPTIONS.keys()
        if unknown:
            raise ValueError(f"unknown de-identification option(s): {', '.join(sorted(unknown))}")

    @property
    def label(self) -> str:
        """What DeidentificationMethod records: profile, version, options."""
        opts = ", ".join(sorted(self.options)) or "no options"
        return f"fhirai {self.name} v{self.version}: PS3.15 Basic Profile; {opts}"[:64]

    def action(self, keyword: str) -> str:
        action = ACTIONS.get(keyword, "")
        for option in sorted(self.options):
            action = OPTIONS[option][0].get(keyword, action)
        return action


def safelist_parse(entries: list[str]) -> frozenset[tuple[str, int, int]]:
    """ "CREATOR:gggg,ee" entries as (creator, group, element low byte); ValueError when malformed."""
    out = set()
    for entry in entries:
        creator, _, where = entry.rpartition(":")
        group, _, element = where.partition(",")
        if not creator or not group or not element:
            raise ValueError(f"private safelist entry {entry!r} is not CREATOR:gggg,ee")
        out.add((creator, int(group, 16), int(element, 16) & 0xFF))
    return frozenset(out)


def profile_current() -> DeidProfile:
    """The site's profile: the active version in the database (console: de-identification
    profiles), else the one the settings describe."""
    from fhirai.deid.models import ProfileVersion

    active = ProfileVersion.objects.filter(active=True).first()
    if active is not None:
        return DeidProfile(
            name=active.name,
            version=str(active.version),
            options=frozenset(active.options),
            private_safelist=safelist_parse(active.private_safelist),
        )
    return DeidProfile(
        name=settings.FHIRAI_DEID_PROFILE,
        version=settings.FHIRAI_DEID_PROFILE_VERSION,
        options=frozenset(settings.FHIRAI_DEID_OPTIONS),
        private_safelist=safelist_parse(settings.FHIRAI_DEID_PRIVATE_SAFELIST),
    )


def date_shift_days(patient_pseudonym: str) -> int:
    """The patient's date shift (negative days): consistent across studies, unknowable without the
    site secret."""
    digest = hmac_int("date-shift", patient_pseudonym)
    return -(digest % DATE_SHIFT_DAYS + 1)


@dataclass
class Pseudonyms:
    """The pseudonyms one study's de-identification used, for the vault."""

    patient: str = ""
    accession: str = ""
    uids: dict[str, str] = field(default_factory=dict)


def patient_pseudonym(patient_id: str, issuer: str = "") -> str:
    """The patient's pseudonym at this site: keyed on issuer + ID, so equal IDs from two issuers differ."""
    return pseudonym("patient-id", f"{issuer}\x1f{patient_id}", prefix="P")


def accession_pseudonym(accession: str) -> str:
    return pseudonym("accession", accession, prefix="A")


@dataclass
class _Run:
    """One dataset's de-identification: the profile, the pseudonyms used, what the record says
    about itself (for cleaning free text) and the patient's date shift."""

    profile: DeidProfile
    used: Pseudonyms
    known: Known = field(default_factory=Known)
    shift: int = 0


def dataset_known(ds: Dataset) -> Known:
    """The dataset's own identifiers, looked for in its free text by the cleaning options."""

    def values(*keywords: str) -> tuple[str, ...]:
        out: list[str] = []
        for keyword in keywords:
            value = ds.get(keyword)
            items = list(value) if isinstance(value, MultiValue) else [value]
            out += [str(v) for v in items if v is not None and str(v).strip()]
        return tuple(out)

    return Known(
        names=values(
            "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
            "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
            "RequestingPhysician", "ResponsiblePerson",
        ),
        identifiers=values("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "AdmissionID"),
        phones=values("PatientTelephoneNumbers", "ReferringPhysicianTelephoneNumbers"),
        addresses=values("PatientAddress", "ReferringPhysicianAddress", "InstitutionAddress"),
        dates=values("PatientBirthDate"),
    )  # fmt: skip


def dataset_deidentify(
    raw: bytes, *, issuer: str = "", profile: DeidProfile | None = None
) -> tuple[bytes, Pseudonyms]:
    """De-identify one Part 10 stream by the profile (the site's when None); returns the new stream
    (same transfer syntax, pixel data untouched) and the pseudonyms used. Raises the parser's
    error on a corrupt stream."""
    profile = profile or profile_current()
    ds = dcmread(BytesIO(raw))
    used = Pseudonyms()
    patient_id = str(ds.get("PatientID", "") or "")
    issuer = issuer or str(ds.get("IssuerOfPatientID", "") or "")
    used.patient = patient_pseudonym(patient_id, issuer)
    accession = str(ds.get("AccessionNumber", "") or "")
    used.accession = accession_pseudonym(accession) if accession else ""
    run = _Run(profile, used)
    if {"clean-descriptors", "retain-patient-characteristics", "clean-pixel-data"} & profile.options:
        run.known = dataset_known(ds)  # what the free text and the pixels are searched for
    if at_risk(ds):
        if "clean-pixel-data" not in profile.options:
            raise Withheld(
                f"modality {ds.get('Modality', '?')} may carry burned-in text and the profile "
                "does not clean pixel data"
            )
        ds = pixels_clean(ds, run.known)
    if "retain-longitudinal-modified-dates" in profile.options:
        run.shift = date_shift_days(used.patient)
    _private_remove(ds, profile)
    _walk(ds, run)
    if hasattr(ds, "file_meta"):
        _walk(ds.file_meta, run)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = profile.label
    codes = [METHOD_CODE] + [
        (code, "DCM", meaning) for o in sorted(profile.options) for code, meaning in [OPTIONS[o][1]]
    ]
    items = []
    for value, scheme, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if run.shift:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), used


def _private_remove(ds: Dataset, profile: DeidProfile) -> None:
    """Private attributes go (E.1), except the safelisted ones under Retain Safe Private (E.3.10)."""
    if "retain-safe-private" not in profile.options or not profile.private_safelist:
        ds.remove_private_tags()
        return
    keep = set()
    for creator, group, element in profile.private_safelist:
        block = next(
            (
                e.tag.element
                for e in ds
                if e.tag.group == group
                and 0x10 <= e.tag.element <= 0xFF
                and str(e.value).strip() == creator.strip()
            ),
            None,
        )
        if block is not None:
            keep.add((group, (block << 8) | element))
            keep.add((group, block))  # its Private Creator

    def walk(dataset: Dataset) -> None:
        for elem in list(dataset):
            if elem.tag.is_private and (elem.tag.group, elem.tag.element) not in keep:
                del dataset[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    item.remove_private_tags()

    walk(ds)


def _walk(ds: Dataset, run: _Run) -> None:
    for elem in list(ds):
        _apply(ds, elem, run)


def _apply(ds: Dataset, elem: DataElement, run: _Run) -> None:
    tag = elem.tag
    if tag.group & 0xFF00 in (0x5000, 0x6000) and (
        tag.group & 0xFF00 == 0x5000 or tag.element in _OVERLAY_DROP
    ):
        del ds[tag]  # curves and overlay data/comments can carry burned-in identity
        return
    if tag.is_private:
        return  # only safelisted private attributes are still here (_private_remove)
    keyword = keyword_for_tag(tag)
    action = run.profile.action(keyword)
    used = run.used
    if (
        run.shift
        and elem.VR in ("DA", "DT", "TM")
        and "Birth" not in keyword
        and action in ("X", "Z", "D", "")
    ):
        if elem.VR != "TM":  # times of day are kept: only the dates move
            elem.value = date_shift(elem.value, elem.VR, run.shift)
        return
    if action == "X":
        del ds[tag]
    elif action == "Z":
        kind = PSEUDONYMIZED.get(keyword)
        if kind == "patient-id":
            elem.value = used.patient
        elif kind == "accession":
            elem.value = used.accession
        else:
            elem.value = "" if elem.VR != "SQ" else Sequence()
    elif action == "K":
        return
    elif action == "C":
        _clean(ds, elem, run)
    elif elem.VR == "SQ":
        for item in elem.value:
            _walk(item, run)
    elif action == "U" or (elem.VR == "UI" and action != "K"):
        if "retain-uids" not in run.profile.options:
            elem.value = _uids(elem.value, used, _remap_uid)
    elif elem.VR == "PN":
        del ds[tag]  # any other person name: X


def _clean(ds: Dataset, elem: DataElement, run: _Run) -> None:
    """Action C: free text kept with every identifier found replaced (fhirai.deid.text)."""
    if elem.VR == "SQ":
        del ds[elem.tag]
        return
    if elem.VR not in ("LO", "LT", "SH", "ST", "UT", "UC"):
        del ds[elem.tag]
        return
    values = (
        elem.value
        if isinstance(elem.value, list) or type(elem.value).__name__ == "MultiValue"
        else [elem.value]
    )
    cleaned = [text_scrub(str(v), run.known).text for v in values]
    limit = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}.get(elem.VR)
    cleaned = [c[:limit] if limit else c for c in cleaned]
    elem.value = cleaned if len(cleaned) > 1 else cleaned[0]


def date_shift(value: object, vr: str, days: int) -> object:
    """A DA or DT value (or several; HL7 DTM reads as DT) moved by `days`, precision and time of
    day kept; empty when it is not a date."""

    def one(text: str) -> str:
        text = str(text).strip()
        if len(text) < 8 or not text[:8].isdigit():
            return ""
        try:
            day = datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            return ""
        moved = day + timedelta(days=days)
        return moved.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")

    if isinstance(value, str):
        return one(value)
    if value is None:
        return value
    return [one(v) for v in value]  # type: ignore[attr-defined]


def _remap_uid(uid: str, used: Pseudonyms) -> str:
    new = uid_remap(uid)
    if new != uid:
        used.uids[new] = uid
    return new


def _uids(value: object, used: Pseudonyms, fn: Callable[[str, Pseudonyms], str]) -> object:
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return fn(value, used)
    return [fn(str(v), used) for v in value]  # type: ignore[attr-defined]
