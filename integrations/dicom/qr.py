"""fhirai as a Query/Retrieve SCU for priors (fhirai.routing.priors decides what to ask): C-FIND in
the Study Root information model for the patient's studies (then their series, for modality and
body part), and C-MOVE of the chosen study to fhirai's priors AE title, which the PACS must know
with this host's address and the SCP's port. Study Root is what PACSs support most widely; a PACS
that answers only Patient Root is not asked (the association proposes Study Root only)."""

from __future__ import annotations

import logging

from django.conf import settings
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from fhirai.errors import Unavailable
from fhirai.routing.priors import CANDIDATES_CHECKED, Candidate, Moved
from integrations.dicom.scu import pacs_tls_args

log = logging.getLogger(__name__)
PENDING = (0xFF00, 0xFF01)
SUCCESS, WARNING = 0x0000, 0xB000
MOVE_FAILURES = {
    0xA701: "out of resources: unable to calculate number of matches",
    0xA702: "out of resources: unable to perform sub-operations",
    0xA801: "move destination unknown (the PACS does not know fhirai's priors AE title)",
    0xA900: "identifier does not match SOP class",
    0xFE00: "sub-operations cancelled",
}


class PacsPriors:
    """One PACS (called AE title, host, port) asked by fhirai's AE title (FHIRAI_DICOM_AE)."""

    def __init__(self, aet: str, host: str, port: int) -> None:
        self.aet, self.host, self.port = aet, host, port

    def _associate(self, context: str, timeout: float) -> object:
        ae = AE(ae_title=settings.FHIRAI_DICOM_AE)
        ae.acse_timeout = ae.network_timeout = settings.FHIRAI_DICOM_TIMEOUT
        ae.dimse_timeout = timeout
        ae.connection_timeout = min(settings.FHIRAI_DICOM_TIMEOUT, 10.0)
        ae.add_requested_context(context)
        # FHIRAI_PACS_TLS names this PACS by its destination name (when FHIRAI_PRIORS_PACS is one),
        # by HOST:PORT, or `*`.
        name = "" if "@" in settings.FHIRAI_PRIORS_PACS else settings.FHIRAI_PRIORS_PACS.strip()
        tls_args = pacs_tls_args(name, self.host, self.port)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.aet, tls_args=tls_args)
        except OSError as exc:
            raise Unavailable(
                f"PACS {self.aet}@{self.host}:{self.port} unreachable: {type(exc).__name__}"
            ) from exc
        if not assoc.is_established:
            raise Unavailable(f"PACS {self.aet}@{self.host}:{self.port} did not accept the association")
        return assoc

    def _find(self, query: Dataset) -> list[Dataset]:
        assoc = self._associate(StudyRootQueryRetrieveInformationModelFind, settings.FHIRAI_DICOM_TIMEOUT)
        found: list[Dataset] = []
        try:
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):  # type: ignore[attr-defined]
                code = int(getattr(status, "Status", -1)) if status else -1
                if code in PENDING and identifier is not None:
                    found.append(identifier)
                elif code == -1:
                    raise Unavailable(f"PACS {self.aet}: no C-FIND response (association lost or timed out)")
                elif code not in (SUCCESS, *PENDING):
                    raise Unavailable(f"PACS {self.aet}: C-FIND answered {code:04X}")
        finally:
            if assoc.is_established:  # type: ignore[attr-defined]
                assoc.release()  # type: ignore[attr-defined]
        return found

    def studies_find(
        self, *, patient_id: str, issuer: str, earliest: str, latest: str, modalities: list[str]
    ) -> list[Candidate]:
        """The patient's studies dated earliest..latest, newest first; the series of the most recent
        few are asked for their modalities and body parts. ModalitiesInStudy and the issuer are
        return keys, checked here: not every PACS matches on them."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient_id
        query.IssuerOfPatientID = ""
        query.StudyDate = f"{earliest}-{latest}"
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = ""
        query.StudyDescription = ""
        studies = []
        for ds in self._find(query):
            if str(ds.get("PatientID", "")) != patient_id:
                continue  # a PACS that matched loosely (wildcards, case)
            their_issuer = str(ds.get("IssuerOfPatientID", "") or "")
            if issuer and their_issuer and their_issuer != issuer:
                continue
            uid = str(ds.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            listed = ds.get("ModalitiesInStudy") or []
            listed = [listed] if isinstance(listed, str) else list(listed)
            studies.append(
                Candidate(
                    study_uid=uid,
                    study_date=str(ds.get("StudyDate", "") or ""),
                    modalities=tuple(str(m).upper() for m in listed if m),
                    description=str(ds.get("StudyDescription", "") or ""),
                )
            )
        studies.sort(key=lambda c: c.study_date, reverse=True)
        wanted = {m.upper() for m in modalities}
        out = []
        for candidate in studies:
            if len(out) >= CANDIDATES_CHECKED:
                break
            if wanted and candidate.modalities and not wanted & set(candidate.modalities):
                continue
            out.append(self._with_series(candidate))
        return out

    def _with_series(self, candidate: Candidate) -> Candidate:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = candidate.study_uid
        query.SeriesInstanceUID = ""
        query.Modality = ""
        query.BodyPartExamined = ""
        series = self._find(query)
        modalities = {str(s.get("Modality", "") or "").upper() for s in series} - {""}
        parts = {str(s.get("BodyPartExamined", "") or "").upper() for s in series} - {""}
        return Candidate(
            study_uid=candidate.study_uid,
            study_date=candidate.study_date,
            modalities=tuple(sorted(modalities)) or candidate.modalities,
            description=candidate.description,
            body_parts=tuple(sorted(parts)),
        )

    def study_move(self, study_uid: str, *, destination: str, timeout: float) -> Moved:
        """C-MOVE the study to `destination` (an AE title the PACS knows). Returns when the final
        response comes, which the PACS sends after its last C-STORE sub-operation; Unavailable when
        the PACS cannot be reached, refuses, or does not finish within `timeout` seconds."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        assoc = self._associate(StudyRootQueryRetrieveInformationModelMove, timeout)
        final = None
        try:
            for status, _identifier in assoc.send_c_move(  # type: ignore[attr-defined]
                query, destination, StudyRootQueryRetrieveInformationModelMove
            ):
                if not status:
                    raise Unavailable(f"PACS {self.aet}: no C-MOVE response within {timeout:.0f} s")
                if int(status.Status) not in PENDING:
                    final = status
        finally:
            if assoc.is_established:  # type: ignore[attr-defined]
                assoc.release()  # type: ignore[attr-defined]
        if final is None:
            raise Unavailable(f"PACS {self.aet}: the C-MOVE ended without a final response")
        code = int(final.Status)
        completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        warning = int(final.get("NumberOfWarningSuboperations", 0) or 0)
        if code not in (SUCCESS, WARNING) and not completed:
            why = MOVE_FAILURES.get(code, f"status {code:04X}")
            raise Unavailable(f"PACS {self.aet} refused the C-MOVE: {why}")
        detail = f"C-MOVE from {self.aet}: {completed} sent, {failed} failed, {warning} with warnings"
        log.info("prior C-MOVE from %s: %d completed, %d failed", self.aet, completed, failed)
        return Moved(completed=completed, failed=failed, warning=warning, detail=detail)
