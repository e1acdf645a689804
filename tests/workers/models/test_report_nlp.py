"""The clinical NLP reference model: report narrative from HL7 v2, ConText assertions per finding,
the status rules, and the runnable on a whole de-identified ORU^R01 message. No database: the model
runs on the inference tier, which never touches it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from fhirai.routing.manifest import manifest_read
from fhirai.routing.reference import REFERENCE_DIR
from workers.inference.errors import ModelInputError
from workers.models.report_nlp import (
    CHEST_FINDINGS,
    STATUSES,
    ReportNLP,
    ReportNlpModel,
    hl7_unescape,
    report_text_from_hl7,
)

CPU = torch.device("cpu")
# medspaCy's combined matcher runs spaCy's token Matcher even when only phrase rules are loaded; it
# silences this warning at import, pytest's own warning filters bring it back.
pytestmark = pytest.mark.filterwarnings("ignore:.*W036")


def oru(*segments: str, sep: str = "\r", msh: str = "MSH|^~\\&") -> str:
    """An ORU^R01 as a de-identified one would look: pseudonymous ids, no names."""
    head = [
        f"{msh}|RIS|HOSP|FHIRAI|HOSP|20240101120000||ORU^R01^ORU_R01|MSG00001|P|2.5.1",
        "PID|1||PSEUDO123^^^HOSP^MR||||1960|M",
        "OBR|1|OPSEUDO1|OPSEUDO2|71045^XR CHEST 2 VIEWS^CPT",
    ]
    return sep.join([*head, *segments]) + sep


@pytest.fixture(scope="module")
def nlp() -> ReportNLP:
    return ReportNLP(CHEST_FINDINGS)


@pytest.fixture(scope="module")
def model() -> ReportNlpModel:
    return ReportNlpModel(CPU, CHEST_FINDINGS)


def finding(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in result["findings"] if f["name"] == name)


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["status"] for f in result["findings"] if f["status"] != "not-mentioned"}


# --- report_text_from_hl7 -----------------------------------------------------------------------


def test_text_obx_and_nte_are_read_in_message_order_one_block_each():
    message = oru(
        "NTE|1||Comparison: none.",
        "OBX|1|TX|18782-3^Study observation^LN|1|FINDINGS: No pneumothorax.||||||F",
        "OBX|2|NM|8867-4^Heart rate^LN|2|72|/min|||||F",
        "OBX|3|CE|59776-5^Finding^LN|3|36118008^Pneumothorax^SCT||||||F",
        "OBX|4|FT|19005-8^Impression^LN|4|IMPRESSION: Normal chest.||||||F",
        "NTE|1||Read by resident.",
        "OBX|5|ST|18782-3^Study observation^LN|5|Heart size normal.||||||F",
    )
    assert report_text_from_hl7(message) == (
        "Comparison: none.\nFINDINGS: No pneumothorax.\nIMPRESSION: Normal chest.\nRead by resident.\n"
        "Heart size normal."
    )


def test_deleted_and_wrong_observations_are_left_out():
    message = oru(
        "OBX|1|TX|18782-3^^LN|1|Small pneumothorax.||||||W",
        "OBX|2|TX|18782-3^^LN|2|Deleted line.||||||D",
        "OBX|3|TX|18782-3^^LN|3|No pneumothorax.||||||C",
    )
    assert report_text_from_hl7(message) == "No pneumothorax."


def test_delimiter_escapes_are_decoded():
    message = oru("OBX|1|TX|18782-3^^LN|1|a\\F\\b \\S\\ c\\T\\d \\R\\ e\\E\\f||||||F")
    assert report_text_from_hl7(message) == "a|b ^ c&d ~ e\\f"


def test_formatting_escapes_become_line_breaks_and_spaces():
    value = "FINDINGS:\\.br\\No pneumothorax.\\.sp 2\\IMPRESSION:\\.sk 3\\Normal.\\.ce\\End \\H\\bold\\N\\."
    message = oru(f"OBX|1|FT|18782-3^^LN|1|{value}||||||F")
    assert (
        report_text_from_hl7(message) == "FINDINGS:\nNo pneumothorax.\n\n\nIMPRESSION:   Normal.\nEnd bold."
    )


def test_hex_escapes_are_decoded_as_utf8_or_latin1():
    assert hl7_unescape("caf\\XC3A9\\ and na\\XEF\\ve") == "café and naïve"


def test_a_stray_escape_character_is_kept():
    assert hl7_unescape("C:\\reports\\x and 5 \\ 3") == "C:\\reports\\x and 5 \\ 3"


def test_formatting_escaped_twice_by_an_earlier_stage_is_still_a_line_break():
    # fhirai.deid.hl7v2 unescapes only delimiters and so re-escapes "\.br\" as "\E\.br\E\".
    message = oru("OBX|1|FT|18782-3^^LN|1|No pneumothorax.\\E\\.br\\E\\Small effusion.||||||F")
    assert report_text_from_hl7(message) == "No pneumothorax.\nSmall effusion."


def test_repetitions_are_joined_by_line_breaks():
    message = oru("OBX|1|TX|18782-3^^LN|1|FINDINGS:~No pneumothorax.~Small effusion.||||||F")
    assert report_text_from_hl7(message) == "FINDINGS:\nNo pneumothorax.\nSmall effusion."


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_any_segment_separator_gives_the_same_text(sep):
    message = oru("OBX|1|TX|18782-3^^LN|1|No pneumothorax.||||||F", "NTE|1||Prelim.", sep=sep)
    assert report_text_from_hl7(message) == "No pneumothorax.\nPrelim."


def test_mllp_framing_and_a_raw_line_break_inside_a_value_are_tolerated():
    message = oru("OBX|1|TX|18782-3^^LN|1|There is no pneumothorax or\npleural effusion.||||||F")
    assert (
        report_text_from_hl7("\x0b" + message + "\x1c\r") == "There is no pneumothorax or\npleural effusion."
    )


def test_custom_encoding_characters_from_msh2():
    message = oru(
        "OBX#1#TX#18782-3*Study observation*LN#1#Effusion%F%stable%.br%left@right#######F",
        msh="MSH#*@%!",
    ).replace("|", "#")
    assert report_text_from_hl7(message) == "Effusion#stable\nleft\nright"


def test_text_that_is_not_hl7_is_refused():
    with pytest.raises(ValueError, match="not an HL7 v2 message"):
        report_text_from_hl7("No pneumothorax.")


# --- ReportNLP ----------------------------------------------------------------------------------


def test_negated_finding_is_not_present(nlp):
    f = finding(nlp("No pneumothorax."), "pneumothorax")
    assert (f["status"], f["present"]) == ("negated", False)
    assert f["mentions"][0]["negated"] is True
    assert f["coding"] == {"system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax"}


def test_affirmed_finding_is_present(nlp):
    f = finding(nlp("Small left pleural effusion."), "pleural effusion")
    assert (f["status"], f["present"]) == ("affirmed", True)
    assert f["mentions"][0]["text"] == "pleural effusion"
    assert not any(
        f["mentions"][0][k] for k in ("negated", "uncertain", "historical", "hypothetical", "family")
    )


@pytest.mark.parametrize(
    "text",
    [
        "Possible consolidation in the right lower lobe.",
        "Cannot exclude a small focus of consolidation.",
        "Consolidation cannot be excluded.",
        "Questionable consolidation at the left base.",
    ],
)
def test_uncertain_finding_is_not_present(nlp, text):
    f = finding(nlp(text), "consolidation")
    assert (f["status"], f["present"]) == ("uncertain", False)
    assert f["mentions"][0]["uncertain"] is True


@pytest.mark.parametrize(
    "text",
    ["If there is pneumothorax, call the surgical team.", "Evaluate for pneumothorax.", "R/O pneumothorax."],
)
def test_hypothetical_mention_and_clinical_question_are_uncertain(nlp, text):
    f = finding(nlp(text), "pneumothorax")
    assert (f["status"], f["present"]) == ("uncertain", False)
    assert f["mentions"][0]["hypothetical"] is True
    assert f["mentions"][0]["negated"] is False


@pytest.mark.parametrize("question", ["Rule out pneumothorax.", "Evaluate for pneumothorax.", "R/O PTX."])
def test_the_report_answers_the_clinical_question(nlp, question):
    text = f"INDICATION: {question}\nFINDINGS: No pneumothorax."
    assert finding(nlp(text), "pneumothorax")["status"] == "negated"


def test_cannot_rule_out_stays_a_hedge(nlp):
    assert finding(nlp("No pneumothorax on the left. Cannot rule out a right pneumothorax."), "pneumothorax")[
        "status"
    ] == ("uncertain")


def test_family_history_says_nothing_about_the_patient(nlp):
    f = finding(nlp("Family history of cardiomegaly."), "cardiomegaly")
    assert (f["status"], f["present"]) == ("not-mentioned", False)
    assert f["mentions"][0]["family"] is True


def test_history_alone_is_uncertain_not_present(nlp):
    f = finding(nlp("History of pneumothorax."), "pneumothorax")
    assert (f["status"], f["present"]) == ("uncertain", False)
    assert f["mentions"][0]["historical"] is True


def test_a_current_negation_outweighs_a_historical_mention(nlp):
    assert finding(nlp("History of pneumothorax. No pneumothorax."), "pneumothorax")["status"] == "negated"


def test_historical_mentions_can_be_counted_as_present():
    f = finding(
        ReportNLP(CHEST_FINDINGS, {"historical_present": True})("History of pneumothorax."), "pneumothorax"
    )
    assert (f["status"], f["present"]) == ("affirmed", True)


@pytest.mark.parametrize(
    "text",
    [
        "No evidence of pneumothorax or pleural effusion.",
        "No pneumothorax or effusion.",
        "No focal consolidation, pleural effusion, or pneumothorax.",
        "Lungs are clear without consolidation, effusion or pneumothorax.",
    ],
)
def test_one_negation_covers_a_coordinated_list(nlp, text):
    result = statuses(nlp(text))
    assert set(result.values()) == {"negated"}
    assert {"pneumothorax", "pleural effusion"} <= set(result) or {
        "consolidation",
        "pleural effusion",
    } <= set(result)


def test_but_ends_the_scope_of_a_negation(nlp):
    assert statuses(nlp("No pneumothorax but a small left pleural effusion.")) == {
        "pneumothorax": "negated",
        "pleural effusion": "affirmed",
    }


def test_each_sentence_has_its_own_context(nlp):
    text = "No pneumothorax. Small right effusion. Mild cardiomegaly.\nPossible left basilar atelectasis"
    assert statuses(nlp(text)) == {
        "pneumothorax": "negated",
        "pleural effusion": "affirmed",
        "cardiomegaly": "affirmed",
        "atelectasis": "uncertain",
    }


def test_report_lines_without_full_stops_are_separate_sentences(nlp):
    result = nlp("FINDINGS: No pneumothorax\nSmall left pleural effusion\nHeart size normal")
    assert statuses(result) == {"pneumothorax": "negated", "pleural effusion": "affirmed"}
    assert finding(result, "pleural effusion")["mentions"][0]["sentence"] == "Small left pleural effusion"


@pytest.mark.parametrize(
    "text",
    [
        "Pneumothorax is not seen.",
        "The left pneumothorax has resolved.",
        "Interval resolution of the pneumothorax.",
        "Pneumothorax: no.",
        "FINDINGS: No pneumothorax.",
    ],
)
def test_radiology_phrasings_of_absence(nlp, text):
    assert finding(nlp(text), "pneumothorax")["status"] == "negated"


def test_backward_negation_does_not_reach_an_earlier_finding(nlp):
    text = "Moderate cardiomegaly; a small right pleural effusion is not seen on this view."
    assert statuses(nlp(text)) == {"cardiomegaly": "affirmed", "pleural effusion": "negated"}


def test_one_affirmed_mention_makes_the_finding_present(nlp):
    f = finding(nlp("No effusion on the right. Small left pleural effusion."), "pleural effusion")
    assert (f["status"], f["present"]) == ("affirmed", True)
    assert [m["negated"] for m in f["mentions"]] == [True, False]


def test_uncertain_outranks_negated(nlp):
    assert finding(nlp("No pneumothorax on the left. Possible tiny right pneumothorax."), "pneumothorax")[
        "status"
    ] == ("uncertain")


def test_matching_is_case_insensitive(nlp):
    result = nlp("NO PNEUMOTHORAX. Ptx absent. PLEURAL EFFUSION ON THE LEFT.")
    assert [m["text"] for m in finding(result, "pneumothorax")["mentions"]] == ["PNEUMOTHORAX", "Ptx"]
    assert statuses(result) == {"pneumothorax": "negated", "pleural effusion": "affirmed"}


def test_offsets_index_the_exact_text_given(nlp):
    text = "  EXAM:\tXR chest\r\n\r\nFINDINGS:  No  pneumothorax.\n\tSmall  left pleural effusion,  Cardiomegaly.  "
    result = nlp(text)
    mentions = [m for f in result["findings"] for m in f["mentions"]]
    assert len(mentions) == 3
    for m in mentions:
        assert text[m["start"] : m["end"]] == m["text"]


def test_every_finding_is_listed_in_order_with_its_coding(nlp):
    result = nlp("Normal chest radiograph.")
    assert [f["name"] for f in result["findings"]] == [f["name"] for f in CHEST_FINDINGS]
    assert all(f["status"] == "not-mentioned" and f["mentions"] == [] for f in result["findings"])
    assert all(f["coding"]["system"] == "http://snomed.info/sct" for f in result["findings"])
    assert result["conclusion"] == "None of the target findings is mentioned."
    assert {f["status"] for f in result["findings"]} <= set(STATUSES)


def test_conclusion_is_one_line_by_status(nlp):
    result = nlp("Small effusion. No pneumothorax. Possible consolidation.")
    assert result["conclusion"] == (
        "Reported: pleural effusion. Uncertain: consolidation. Negated: pneumothorax."
    )


def test_evidence_sentence_is_trimmed_around_the_mention(nlp):
    text = "The " + "very " * 100 + "large left pleural effusion is noted" + " again" * 100 + "."
    mention = finding(nlp(text), "pleural effusion")["mentions"][0]
    assert "pleural effusion" in mention["sentence"]
    assert len(mention["sentence"]) <= 302
    assert text[mention["start"] : mention["end"]] == "pleural effusion"


def test_the_reference_manifest_findings_load_and_agree_with_the_builtin_codes():
    manifest = manifest_read(REFERENCE_DIR / "chest-report-findings" / "1.0.0")
    builtin = {f["name"]: f["coding"] for f in CHEST_FINDINGS}
    for f in manifest.outputs["findings"]:
        assert builtin[f["name"]] == f["coding"]
    result = ReportNLP(manifest.outputs["findings"])("Small pneumothorax.")
    assert finding(result, "pneumothorax")["present"] is True


def test_a_phrase_claimed_by_two_findings_is_refused():
    findings = [
        {"name": "a", "phrases": ["effusion"], "coding": {"system": "s", "code": "1"}},
        {"name": "b", "phrases": ["Effusion"], "coding": {"system": "s", "code": "2"}},
    ]
    with pytest.raises(ValueError, match="also belongs to"):
        ReportNLP(findings)
    with pytest.raises(ModelInputError, match="findings are unusable"):
        ReportNlpModel(CPU, findings)


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="unknown NLP options"):
        ReportNLP(CHEST_FINDINGS, {"count_family": True})


def test_concurrent_calls_give_the_sequential_results(nlp):
    texts = [f"No pneumothorax. {n} mm pulmonary nodule. Possible consolidation." for n in range(12)]
    expected = [nlp(t) for t in texts]
    got: dict[int, dict[str, Any]] = {}

    def run(i: int) -> None:
        got[i] = nlp(texts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [got[i] for i in range(len(texts))] == expected


# --- ReportNlpModel -----------------------------------------------------------------------------


def test_the_runnable_reads_a_whole_oru_message(model):
    message = oru(
        "OBX|1|TX|18782-3^Study observation^LN|1|EXAM: XR CHEST 2 VIEWS||||||F",
        "OBX|2|TX|18782-3^Study observation^LN|2|INDICATION: Evaluate for pneumothorax.||||||F",
        "OBX|3|TX|18782-3^Study observation^LN|3|FINDINGS: No pneumothorax\\.br\\Small left pleural effusion||||||F",
        "OBX|4|TX|18782-3^Study observation^LN|4|Mild cardiomegaly. Healed left rib fractures.||||||F",
        "OBX|5|FT|19005-8^Impression^LN|5|IMPRESSION:~1. Small left pleural effusion.~2. Cardiomegaly.||||||F",
    )
    out = model([message])
    text = report_text_from_hl7(message)
    assert model.inputs == "text"
    assert out["characters"] == len(text)
    assert statuses(out) == {
        "pneumothorax": "negated",
        "pleural effusion": "affirmed",
        "cardiomegaly": "affirmed",
        "rib fracture": "affirmed",
    }
    pneumothorax = finding(out, "pneumothorax")
    assert [(m["hypothetical"], m["negated"]) for m in pneumothorax["mentions"]] == [
        (True, False),
        (False, True),
    ]
    for f in out["findings"]:
        for m in f["mentions"]:
            assert text[m["start"] : m["end"]] == m["text"]
    assert out["conclusion"].startswith("Reported: pleural effusion, cardiomegaly, rib fracture.")


def test_the_runnable_reads_plain_text_as_the_report(model):
    out = model(["Possible right lower lobe consolidation."])
    assert statuses(out) == {"consolidation": "uncertain"}
    assert out["characters"] == len("Possible right lower lobe consolidation.")


def test_a_message_without_narrative_is_an_input_error(model):
    message = oru("OBX|1|NM|8867-4^Heart rate^LN|1|72|/min|||||F")
    with pytest.raises(ModelInputError, match="no report text"):
        model([message])
    with pytest.raises(ModelInputError, match="no report text"):
        model([])


def test_text_beyond_spacys_limit_is_an_input_error(model):
    with pytest.raises(ModelInputError, match="characters"):
        model(["No pneumothorax. " * 70_000])
