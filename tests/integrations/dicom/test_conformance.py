"""The published DICOM Conformance Statement is what the SCP negotiates: it is regenerated from
the AE with the default settings and compared with docs/dicom-conformance.md; and the SCP refuses
a SOP class the settings take away."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from integrations.dicom.conformance import conformance_statement
from integrations.dicom.scp import application_entity, server_start, storage_sop_classes
from tests.support.product import free_port

DOC = Path(__file__).resolve().parents[3] / "docs" / "dicom-conformance.md"


@pytest.fixture
def defaults(settings):
    settings.FHIRAI_DICOM_AE, settings.FHIRAI_DICOM_PORT = "FHIRAI", 11112
    settings.FHIRAI_DICOM_MAX_ASSOCIATIONS = 16
    settings.FHIRAI_DICOM_MAX_PDU = 262144
    settings.FHIRAI_DICOM_ACCEPT_SOP_CLASSES, settings.FHIRAI_DICOM_REJECT_SOP_CLASSES = [], []
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = False
    return settings


def test_the_published_statement_is_what_the_scp_negotiates(defaults):
    generated = conformance_statement()
    assert DOC.read_text().rstrip("\n") == generated.rstrip("\n"), (
        "regenerate: python manage.py dicom_conformance > docs/dicom-conformance.md"
    )
    ae = application_entity()
    for context in ae.supported_contexts:
        assert str(context.abstract_syntax) in generated
        for syntax in context.transfer_syntax:
            assert str(syntax) in generated


def test_the_statement_says_which_called_titles_are_answered(defaults):
    assert "Called AE title: not checked" in conformance_statement()
    defaults.FHIRAI_DICOM_CHECK_CALLED_AE = True
    defaults.FHIRAI_PRIORS_PACS = ""
    checked = conformance_statement()
    assert "Called AE title: one of FHIRAI (FHIRAI_DICOM_CHECK_CALLED_AE)" in checked
    assert "takes only instances of a study" not in checked  # no priors: that title is refused
    defaults.FHIRAI_PRIORS_PACS = "PACS@10.0.0.2:104"
    assert "Called AE title: one of FHIRAI, FHIRAI_PRIORS (" in conformance_statement()


def test_sop_classes_are_accepted_or_refused_as_configured(defaults):
    defaults.FHIRAI_DICOM_ACCEPT_SOP_CLASSES = ["CTImageStorage", str(MRImageStorage)]
    defaults.FHIRAI_DICOM_REJECT_SOP_CLASSES = ["MRImageStorage"]
    assert storage_sop_classes() == [str(CTImageStorage)]
    defaults.FHIRAI_DICOM_REJECT_SOP_CLASSES = ["NoSuchStorage"]
    with pytest.raises(ImproperlyConfigured, match="not a storage SOP class"):
        storage_sop_classes()


@pytest.mark.django_db(transaction=True)
def test_a_refused_sop_class_is_not_accepted_at_negotiation(defaults):
    defaults.FHIRAI_DICOM_ACCEPT_SOP_CLASSES = ["CTImageStorage"]
    port = free_port()
    server = server_start(("127.0.0.1", port))
    try:
        scu = AE(ae_title="TESTSCU")
        scu.add_requested_context(CTImageStorage)
        scu.add_requested_context(MRImageStorage)
        assoc = scu.associate("127.0.0.1", port, ae_title="FHIRAI")
        assert assoc.is_established
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
        assert accepted == {str(CTImageStorage)} and rejected == {str(MRImageStorage)}
        assoc.release()
    finally:
        server.shutdown()
