"""Free text through Presidio: the record's own identifiers are caught in any rendering, even where
the NER model would not see a name; clinical wording survives."""

from __future__ import annotations

from fhirai.deid.text import Known, date_variants, name_variants, text_scrub

KNOWN = Known(
    names=("Zyxqual^Brunhild^K", "Referrer^Rita"),
    identifiers=("MRN-7734921", "ACC-55501"),
    phones=("555-201-3344",),
    addresses=("12 Elm Street", "Springfield"),
    dates=("19471103",),
)


def test_known_identifiers_are_caught_in_any_rendering():
    text = (
        "pt zyxqual brunhild seen; mrn 7734921 / ACC-55501. Phone (555) 201 3344. "
        "Born November 3, 1947 (11/03/1947). Address: 12 elm street, SPRINGFIELD. Ref: Rita Referrer."
    )
    out = text_scrub(text, KNOWN)
    for leaked in (
        "zyxqual",
        "brunhild",
        "7734921",
        "55501",
        "201 3344",
        "1947",
        "elm",
        "SPRINGFIELD",
        "Rita",
    ):
        assert leaked.lower() not in out.text.lower(), (leaked, out.text)
    kinds = {f[0] for f in out.findings}
    assert {"PERSON", "ID", "PHONE_NUMBER", "DATE_TIME", "LOCATION"} <= kinds


def test_clinical_text_is_left_alone():
    text = "Mild centrilobular emphysema in both upper lobes. No nodules. Lung 1mm axial recon."
    assert text_scrub(text).text == text


def test_site_identifier_patterns(settings):
    settings.FHIRAI_DEID_ID_PATTERNS = {"mrn": r"\bH\d{8}\b"}
    from fhirai.deid import text as module

    module._engines.clear()  # the site patterns are read when the engine is built
    try:
        assert text_scrub("Prior study under H12345678 reviewed.").text == "Prior study under [ID] reviewed."
    finally:
        module._engines.clear()


def test_variants():
    assert {"Zyxqual Brunhild K", "Brunhild Zyxqual", "Zyxqual", "Brunhild"} <= set(
        name_variants(["Zyxqual^Brunhild^K"])
    )
    assert {"1947-11-03", "11/03/1947", "03.11.1947", "November 3, 1947", "3 Nov 1947"} <= set(
        date_variants(["19471103"])
    )
