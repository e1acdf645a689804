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
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from fhirai.deid.pseudonym import pseudonym, uid_remap

PROFILE_NAME = "PS3.15 E.1 Basic Application Level Confidentiality Profile"
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


def dataset_deidentify(raw: bytes, *, issuer: str = "") -> tuple[bytes, Pseudonyms]:
    """De-identify one Part 10 stream; returns the new stream (same transfer syntax, pixel data
    untouched) and the pseudonyms used. Raises the parser's error on a corrupt stream."""
    ds = dcmread(BytesIO(raw))
    used = Pseudonyms()
    patient_id = str(ds.get("PatientID", "") or "")
    issuer = issuer or str(ds.get("IssuerOfPatientID", "") or "")
    used.patient = patient_pseudonym(patient_id, issuer)
    accession = str(ds.get("AccessionNumber", "") or "")
    used.accession = accession_pseudonym(accession) if accession else ""
    ds.remove_private_tags()
    _walk(ds, used)
    if hasattr(ds, "file_meta"):
        _walk(ds.file_meta, used)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = PROFILE_NAME
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = METHOD_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), used


def _walk(ds: Dataset, used: Pseudonyms) -> None:
    for elem in list(ds):
        _apply(ds, elem, used)


def _apply(ds: Dataset, elem: DataElement, used: Pseudonyms) -> None:
    tag = elem.tag
    if tag.group & 0xFF00 in (0x5000, 0x6000) and (
        tag.group & 0xFF00 == 0x5000 or tag.element in _OVERLAY_DROP
    ):
        del ds[tag]  # curves and overlay data/comments can carry burned-in identity
        return
    keyword = keyword_for_tag(tag)
    action = ACTIONS.get(keyword, "")
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
    elif elem.VR == "SQ":
        for item in elem.value:
            _walk(item, used)
    elif elem.VR == "UI" or action == "U":
        elem.value = _uids(elem.value, used, _remap_uid)
    elif elem.VR == "PN":
        del ds[tag]  # any other person name: X


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
