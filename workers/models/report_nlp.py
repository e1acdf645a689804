"""Clinical NLP on report text, the reference model for task "nlp": which coded findings a
radiologist's report affirms, negates or leaves open, with the sentences that say so.

Why rules and not a neural model: the product turns the hospital's *own* report into coded
Observations, so every answer has to point at the words it was read from, and a site must be able
to add a synonym in its manifest without retraining. medspaCy gives exactly that: PyRuSH sentence
splitting, a TargetMatcher with one case-insensitive rule per manifest phrase (its category is the
finding's name), and ConText (Chapman et al. 2007) deciding for each mention whether it is negated,
uncertain, historical, hypothetical or about a family member.

The text is the report's narrative: for an HL7 v2 ORU^R01 (as the de-identification stage stores it
in the `deid` blob area) the text OBX and NTE segments, decoded by report_text_from_hl7 (plain
Python, no Django, so the inference tier needs nothing else).

ConText runs with medspaCy's default rules plus a few radiology phrasings they miss (RADIOLOGY_RULES
below): backward negation ("pneumothorax is not seen", "the effusion has resolved"), "cannot
exclude" as uncertainty (the defaults read "cannot" as a negation), clinical questions ("evaluate
for pneumothorax", "rule out ...") as hypothetical (the defaults read "evaluate for" as a negation,
which turns the request's question into an absent finding, and "rule out" as a hedge, which would
outweigh the report's answer "No pneumothorax"), and ": no" only at the end of a clause (the
default took the "No" of "FINDINGS: No pneumothorax" and negated nothing).

A blank English tokenizer (medspaCy's own) is used, not en_core_web_sm: the target rules are phrase
rules and ConText scopes by PyRuSH's sentences, so the tagger and lemmatizer add only cost. Measured
on 500 synthetic chest reports (~480 characters, 2 idle CPU cores): identical findings, mentions and
assertions; load 3.2 s vs 3.5 s (2.3 s of it importing spaCy and medspaCy), 56 vs 35 notes/s. (The
model's NER and parser would also have to be excluded: the TargetMatcher refuses spans overlapping
the model's entities, and PyRuSH cannot set sentences on a parsed doc.) PyRuSH is ~90 % of the time
per note; spaCy's punctuation sentencizer is 5x faster but changed 179 of 4,000 statuses, because
report lines often end without a full stop ("No pneumothorax" / "Small effusion" on two OBX lines).

Status of a finding, from its mentions (a finding is never "present" by accident):
  affirmed       some mention is asserted now: not negated, uncertain, hypothetical, family, nor only
                 historical. `present` is true here only;
  uncertain      no affirmed mention, but a hedged one ("possible", "cannot exclude"): it outranks a
                 negation, as in "No pneumothorax on the left. Possible tiny right pneumothorax.";
  negated        the mentions about the patient now are all negated. A clinical question or
                 conditional ("evaluate for pneumothorax", "if there is ...") and a historical
                 mention ("history of pneumothorax") do not outweigh it: the report answers them;
  uncertain      also when the only mentions are such questions, conditionals or history: the report
                 raises the finding but does not say whether this study shows it (indeterminate);
  not-mentioned  no mention, or mentions about family members only (they are listed, as evidence,
                 but say nothing about the patient).
NlpOptions(historical_present=True) makes historical mentions count as affirmed instead.

CHEST_FINDINGS, the default findings, carries SNOMED CT codes from SNOMED CT International as
recalled, not looked up in a release (a few public projects use the same codes and displays):
verify them in your terminology server before clinical use.

Input is de-identified text: the runtime only ever passes the `deid` blob area. Nothing from the
text is logged.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from workers.inference.errors import ModelInputError

if TYPE_CHECKING:
    import torch
    from spacy.language import Language
    from spacy.tokens import Span

log = logging.getLogger(__name__)

SNOMED = "http://snomed.info/sct"
TEXT_TYPES = frozenset({"TX", "FT", "ST"})
SKIP_RESULT_STATUS = frozenset({"D", "W"})  # OBX-11: deleted, or posted in error ("wrong")
STATUSES = ("affirmed", "uncertain", "negated", "not-mentioned")  # a finding's, best first

# The default findings of a chest-imaging report model. Codes from SNOMED CT International, as
# recalled (cross-checked only against other public projects that use the same codes, not against
# a release): verify them in your terminology server before clinical use. 427359005 is "Solitary
# nodule of lung", so only singular nodule phrasings map to it.
CHEST_FINDINGS: tuple[dict[str, Any], ...] = (
    {
        "name": "pneumothorax",
        "phrases": ["pneumothorax", "pneumothoraces", "PTX"],
        "coding": {"system": SNOMED, "code": "36118008", "display": "Pneumothorax"},
    },
    {
        "name": "pleural effusion",
        "phrases": ["pleural effusion", "pleural effusions", "effusion", "effusions", "hydrothorax"],
        "coding": {"system": SNOMED, "code": "60046008", "display": "Pleural effusion"},
    },
    {
        "name": "consolidation",
        "phrases": ["consolidation", "consolidations", "airspace consolidation", "air space consolidation"],
        "coding": {"system": SNOMED, "code": "95436008", "display": "Lung consolidation"},
    },
    {
        "name": "pulmonary nodule",
        "phrases": ["pulmonary nodule", "lung nodule", "solitary pulmonary nodule", "solitary nodule"],
        "coding": {"system": SNOMED, "code": "427359005", "display": "Solitary nodule of lung"},
    },
    {
        "name": "cardiomegaly",
        "phrases": ["cardiomegaly", "enlarged heart", "enlarged cardiac silhouette", "cardiac enlargement"],
        "coding": {"system": SNOMED, "code": "8186001", "display": "Cardiomegaly"},
    },
    {
        "name": "pulmonary edema",
        "phrases": ["pulmonary edema", "pulmonary oedema", "interstitial edema", "alveolar edema"],
        "coding": {"system": SNOMED, "code": "19242006", "display": "Pulmonary edema"},
    },
    {
        "name": "atelectasis",
        "phrases": ["atelectasis", "atelectatic", "collapse of the lung", "lobar collapse"],
        "coding": {"system": SNOMED, "code": "46621007", "display": "Atelectasis"},
    },
    {
        "name": "rib fracture",
        "phrases": ["rib fracture", "rib fractures", "fractured rib", "fractured ribs"],
        "coding": {"system": SNOMED, "code": "33737001", "display": "Fracture of rib"},
    },
)

# ConText rules added to medspaCy's defaults (ConTextRule keyword arguments). Patterns take an
# optional auxiliary so that the longer match wins over the default "is not"/"was not" (FORWARD),
# which would otherwise claim "is" + "not" of "pneumothorax is not seen". Backward rules get a short
# scope: in "cardiomegaly; the effusion is not seen" the negation must not reach the cardiomegaly.
_AUX = {"LOWER": {"IN": ["is", "are", "was", "were", "be", "been"]}, "OP": "?"}
_SEEN = [
    "seen",
    "identified",
    "visualized",
    "visualised",
    "demonstrated",
    "appreciated",
    "present",
    "evident",
]
RADIOLOGY_RULES: tuple[dict[str, Any], ...] = (
    {"literal": "is not seen", "category": "NEGATED_EXISTENCE", "direction": "BACKWARD", "max_scope": 6,
     "pattern": [_AUX, {"LOWER": {"IN": ["not", "n't"]}}, {"LOWER": {"IN": _SEEN}}]},
    {"literal": "is no longer seen", "category": "NEGATED_EXISTENCE", "direction": "BACKWARD", "max_scope": 6,
     "pattern": [_AUX, {"LOWER": "no"}, {"LOWER": "longer"}, {"LOWER": {"IN": [*_SEEN, "visible"]}}]},
    {"literal": "is absent", "category": "NEGATED_EXISTENCE", "direction": "BACKWARD", "max_scope": 6,
     "pattern": [_AUX, {"LOWER": "absent"}]},
    {"literal": "has resolved", "category": "NEGATED_EXISTENCE", "direction": "BACKWARD", "max_scope": 6,
     "pattern": [{"LOWER": {"IN": ["has", "have", "had"]}}, {"LOWER": "now", "OP": "?"},
                 {"LOWER": {"IN": ["resolved", "cleared"]}}]},
    {"literal": "resolution of", "category": "NEGATED_EXISTENCE", "direction": "FORWARD",
     "pattern": [{"LOWER": "interval", "OP": "?"}, {"LOWER": "resolution"}, {"LOWER": "of"}]},
    *({"literal": literal, "category": "POSSIBLE_EXISTENCE", "direction": "FORWARD"}
      for literal in ("cannot exclude", "can not exclude", "cannot rule out", "can not rule out",
                      "questionable", "equivocal", "suspected", "probable", "may represent", "could represent")),
    {"literal": "cannot be excluded", "category": "POSSIBLE_EXISTENCE", "direction": "BACKWARD", "max_scope": 6,
     "pattern": [{"LOWER": {"IN": ["cannot", "can"]}}, {"LOWER": {"IN": ["not", "n't"]}, "OP": "?"},
                 {"LOWER": "be"}, {"LOWER": {"IN": ["excluded", "entirely", "completely"]}},
                 {"LOWER": "excluded", "OP": "?"}]},
    {"literal": "is not excluded", "category": "POSSIBLE_EXISTENCE", "direction": "BACKWARD", "max_scope": 6,
     "pattern": [_AUX, {"LOWER": {"IN": ["not", "n't"]}}, {"LOWER": "excluded"}]},
    # "Pneumothorax: no." The defaults match ": no" anywhere, so "FINDINGS: No pneumothorax" loses its
    # forward "No" to a backward ": no" that has nothing behind it: only at the end of a clause here.
    {"literal": ": no", "category": "NEGATED_EXISTENCE", "direction": "BACKWARD", "max_scope": 6,
     "pattern": r":[ \t]*(?:no|none|absent)(?=[ \t]*(?:[.;,\r\n]|$))"},
    # A clinical question is not a finding: the defaults read these two as negations.
    {"literal": "evaluate for", "category": "HYPOTHETICAL", "direction": "FORWARD",
     "pattern": [{"LOWER": {"IN": ["evaluate", "evaluation", "eval", "assess", "assessment"]}}, {"LOWER": "for"}]},
    {"literal": "to exclude", "category": "HYPOTHETICAL", "direction": "FORWARD"},
)  # fmt: skip
REPLACED_DEFAULTS = frozenset({"evaluate for", "to exclude", ": no", ": none"})  # NEGATED_EXISTENCE
# Default POSSIBLE_EXISTENCE rules that are clinical questions, read as HYPOTHETICAL (same patterns):
# "INDICATION: Rule out pneumothorax. FINDINGS: No pneumothorax." must come out negated, and a
# hedge would outrank the negation. "Cannot rule out" (RADIOLOGY_RULES) stays a hedge.
QUESTION_DEFAULTS = frozenset({"rule out", "r/o", "ro", "rule the patient out"})

_SEGMENT_RE = re.compile(r"^[A-Z][A-Z0-9]{2}$")


# --- HL7 v2 narrative ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


def report_text_from_hl7(message: str) -> str:
    """The narrative of an ORU^R01 message (ER7): OBX-5 of text OBX (TX, FT, ST) and NTE-3, in
    message order, one block per segment, repetitions on their own lines, escapes decoded (HL7
    v2.5.1 section 2.7). OBX marked deleted or wrong (OBX-11 D, W) are left out."""
    segments, enc = _segments(message)
    blocks = []
    for fields_ in segments:
        name = fields_[0]
        if name == "OBX" and len(fields_) > 5 and fields_[2].split(enc.component)[0].strip() in TEXT_TYPES:
            if len(fields_) > 11 and fields_[11].strip().upper() in SKIP_RESULT_STATUS:
                continue
            value = fields_[5]
        elif name == "NTE" and len(fields_) > 3:
            value = fields_[3]
        else:
            continue
        blocks.append("\n".join(hl7_unescape(rep, enc) for rep in value.split(enc.repetition)))
    return "\n".join(blocks)


def hl7_patient_id(message: str) -> str:
    """PID-3's first identifier (its ID component), or '' (no PID, or not an HL7 v2 message). In a
    de-identified message this is the patient's pseudonym, which the result's subject carries."""
    try:
        segments, enc = _segments(message)
    except ValueError:
        return ""
    for fields_ in segments:
        if fields_[0] == "PID" and len(fields_) > 3:
            return fields_[3].split(enc.repetition)[0].split(enc.component)[0]
    return ""


def _segments(message: str) -> tuple[list[list[str]], _Encoding]:
    """Split into segments (CR, LF or CRLF) and fields. A line that does not open a segment is a
    raw line break inside the previous segment's text (some senders send them) and is kept."""
    text = message.lstrip("\ufeff\x0b \t\r\n").rstrip("\x1c\r\n")
    if not text.startswith("MSH") or len(text) < 4:
        raise ValueError("not an HL7 v2 message: it must start with MSH")
    field_sep = text[3]
    msh2 = text[4:].split(field_sep, 1)[0]
    defaults = _Encoding()
    chars = [msh2[i] if i < len(msh2) else None for i in range(4)]
    enc = _Encoding(
        field=field_sep,
        component=chars[0] or defaults.component,
        repetition=chars[1] or defaults.repetition,
        escape=chars[2] or "",  # no escape character declared: nothing is escaped
        subcomponent=chars[3] or defaults.subcomponent,
    )
    raw: list[str] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if _SEGMENT_RE.match(line[:3]) and (len(line) == 3 or line[3] == field_sep):
            raw.append(line)
        elif raw:
            raw[-1] += "\n" + line
    segments = [
        ["MSH", field_sep, *line[4:].split(field_sep)] if line.startswith("MSH") else line.split(field_sep)
        for line in raw
    ]
    return segments, enc


def hl7_unescape(value: str, enc: _Encoding | None = None) -> str:
    """Decode HL7 v2 escape sequences: delimiters (F S T R E), formatting (.br .sp .sk .ce ...),
    hex data (X); highlighting and character-set switches (H N C M Z) are dropped. Anything else
    that merely looks like an escape stays as it was, so a stray escape character loses nothing.

    Formatting and hex sequences that are still there after decoding are decoded once more: a stage
    that knows only the delimiter escapes re-escapes "\\.br\\" as "\\E\\.br\\E\\" (fhirai.deid.hl7v2
    does), and a literal "\\.br\\" is never prose."""
    enc = enc or _Encoding()
    e = enc.escape
    if not e or e not in value:
        return value
    delimiters = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition, "E": e}
    once = _escape_re(e, delimiters=True).sub(lambda m: _decode(m.group(1), delimiters), value)
    return _escape_re(e, delimiters=False).sub(lambda m: _decode(m.group(1), {}), once)


@functools.lru_cache(maxsize=16)
def _escape_re(escape: str, *, delimiters: bool) -> re.Pattern[str]:
    e = re.escape(escape)
    codes = (
        r"\.br|\.fi|\.nf|\.ce|\.(?:sp|sk|in|ti) ?[+-]?\d*|X(?:[0-9A-Fa-f]{2})+|H|N"
        r"|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?|Z[^" + e + r"\r\n]{0,32}"
    )
    return re.compile(e + "(" + ("F|S|T|R|E|" if delimiters else "") + codes + ")" + e)


def _decode(code: str, delimiters: Mapping[str, str]) -> str:
    if code in delimiters:
        return delimiters[code]
    if code in (".br", ".ce"):
        return "\n"
    if code.startswith(".sp"):
        return "\n" * (1 + _count(code[3:], 1))  # end the line, then skip n lines
    if code.startswith(".sk"):
        return " " * _count(code[3:], 1)
    if code.startswith("X"):
        data = bytes.fromhex(code[1:])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    return ""  # \H\ \N\ \.fi\ \.nf\ \.in\ \.ti\ \C..\ \M..\ \Z..\: presentation only


def _count(text: str, default: int) -> int:
    text = text.strip()
    try:
        return max(0, int(text)) if text else default
    except ValueError:
        return default


# --- NLP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NlpOptions:
    """How mentions become a finding's status (see the module docstring)."""

    historical_present: bool = False  # a historical-only mention counts as affirmed, not uncertain
    radiology_rules: bool = True  # add RADIOLOGY_RULES to ConText's defaults
    sentence_chars: int = 300  # evidence sentences are cut to about this many characters

    @classmethod
    def of(cls, value: NlpOptions | Mapping[str, Any] | None) -> NlpOptions:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown NLP options: {', '.join(sorted(unknown))}")
        return cls(**dict(value))


@dataclass(frozen=True)
class _Finding:
    name: str
    phrases: tuple[str, ...]
    coding: dict[str, str]


def _findings_check(findings: Iterable[Mapping[str, Any]]) -> list[_Finding]:
    """The manifest's findings, with names and phrases unique (a phrase in two findings would be
    given to one of them at random by the matcher)."""
    out: list[_Finding] = []
    names: set[str] = set()
    phrases: dict[str, str] = {}
    for i, finding in enumerate(findings):
        name = str(finding.get("name") or "").strip()
        coding = finding.get("coding")
        if not name:
            raise ValueError(f"findings[{i}]: a name is required")
        if name in names:
            raise ValueError(f"findings[{i}]: {name!r} twice")
        if not isinstance(coding, Mapping) or not coding.get("system") or not coding.get("code"):
            raise ValueError(f"findings[{i}] ({name}): a coding with system and code is required")
        names.add(name)
        own = [str(p).strip() for p in (finding.get("phrases") or [name]) if str(p).strip()]
        for phrase in own:
            other = phrases.setdefault(phrase.lower(), name)
            if other != name:
                raise ValueError(f"findings[{i}] ({name}): phrase {phrase!r} also belongs to {other!r}")
        coding_out = {k: str(coding[k]) for k in ("system", "code", "display") if coding.get(k)}
        out.append(_Finding(name, tuple(dict.fromkeys(own)), coding_out))
    if not out:
        raise ValueError("findings: at least one is required")
    return out


def nlp_pipeline(
    findings: Sequence[_Finding], options: NlpOptions, model: str | Language = "default"
) -> Language:
    """medspaCy: its tokenizer, PyRuSH sentences, a target rule per phrase, ConText with the default
    rules (less REPLACED_DEFAULTS, QUESTION_DEFAULTS made hypothetical) and RADIOLOGY_RULES."""
    import medspacy
    from medspacy.context import ConTextRule
    from medspacy.context.context import DEFAULT_RULES_FILEPATH
    from medspacy.ner import TargetRule

    nlp = medspacy.load(model, medspacy_enable="default", load_rules=False)
    nlp.get_pipe("medspacy_target_matcher").add(
        [TargetRule(phrase, f.name) for f in findings for phrase in f.phrases]
    )
    rules = ConTextRule.from_json(DEFAULT_RULES_FILEPATH)
    if options.radiology_rules:
        rules = [_as_question(r) for r in rules if r.literal.lower() not in REPLACED_DEFAULTS]
        rules += [ConTextRule(**spec) for spec in RADIOLOGY_RULES]
    nlp.get_pipe("medspacy_context").add(rules)
    return nlp


def _as_question(rule: Any) -> Any:
    """The rule, or for QUESTION_DEFAULTS the same rule as HYPOTHETICAL."""
    if rule.literal.lower() not in QUESTION_DEFAULTS:
        return rule
    from medspacy.context import ConTextRule

    return ConTextRule(
        rule.literal,
        "HYPOTHETICAL",
        pattern=rule.pattern,
        direction=rule.direction,
        max_scope=rule.max_scope,
        max_targets=rule.max_targets,
    )


class ReportNLP:
    """Findings in report text: construct once per process (~3 s, most of it importing spaCy), call
    per report. Thread safe: calls are serialised, spaCy components are not documented as re-entrant."""

    def __init__(
        self,
        findings: Iterable[Mapping[str, Any]],
        options: NlpOptions | Mapping[str, Any] | None = None,
        *,
        model: str | Language = "default",
    ) -> None:
        self.findings = _findings_check(findings)
        self.options = NlpOptions.of(options)
        self.nlp = nlp_pipeline(self.findings, self.options, model)
        self._lock = threading.Lock()

    def __call__(self, text: str) -> dict[str, Any]:
        """The findings of `text`: one entry per configured finding, in configuration order, with
        the mentions that decided it (character offsets into `text`)."""
        with self._lock:
            doc = self.nlp(text)
        by_name: dict[str, list[dict[str, Any]]] = {f.name: [] for f in self.findings}
        for ent in doc.ents:
            if ent.label_ in by_name:
                by_name[ent.label_].append(self._mention(ent))
        results = []
        for f in self.findings:
            mentions = by_name[f.name]
            status = self.status(mentions)
            results.append(
                {
                    "name": f.name,
                    "coding": dict(f.coding),
                    "present": status == "affirmed",
                    "status": status,
                    "mentions": mentions,
                }
            )
        return {"findings": results, "conclusion": conclusion(results)}

    def _mention(self, ent: Span) -> dict[str, Any]:
        sentence = ent.sent
        return {
            "text": ent.text,
            "start": ent.start_char,
            "end": ent.end_char,
            "sentence": _trim(
                sentence.text, ent.start_char - sentence.start_char, ent.end_char - sentence.start_char,
                self.options.sentence_chars,
            ),
            "negated": bool(ent._.is_negated),
            "uncertain": bool(ent._.is_uncertain),
            "historical": bool(ent._.is_historical),
            "hypothetical": bool(ent._.is_hypothetical),
            "family": bool(ent._.is_family),
        }  # fmt: skip

    def assertion(self, mention: Mapping[str, Any]) -> str:
        """One mention's reading, in this order of precedence: family, negated, uncertain,
        hypothetical, historical, affirmed."""
        if mention["family"]:
            return "family"
        if mention["negated"]:
            return "negated"
        if mention["uncertain"]:
            return "uncertain"
        if mention["hypothetical"]:
            return "hypothetical"
        if mention["historical"] and not self.options.historical_present:
            return "historical"
        return "affirmed"

    def status(self, mentions: Sequence[Mapping[str, Any]]) -> str:
        """The finding's status from its mentions (rules in the module docstring): the best of
        affirmed, uncertain, negated; else uncertain for questions and history; else not-mentioned."""
        readings = {self.assertion(m) for m in mentions}
        for status in ("affirmed", "uncertain", "negated"):
            if status in readings:
                return status
        return "uncertain" if readings & {"hypothetical", "historical"} else "not-mentioned"


def _trim(sentence: str, start: int, end: int, limit: int) -> str:
    """The sentence on one line, cut to about `limit` characters around the mention."""
    if len(sentence) > limit:
        room = max(0, limit - (end - start))
        lo = max(0, min(start - room // 2, len(sentence) - limit))
        hi = min(len(sentence), max(end, lo + limit))
        sentence = ("…" if lo > 0 else "") + sentence[lo:hi] + ("…" if hi < len(sentence) else "")
    return " ".join(sentence.split())


def conclusion(results: Sequence[Mapping[str, Any]]) -> str:
    """One line: the affirmed, uncertain and negated findings by name."""
    parts = []
    for status, label in (("affirmed", "Reported"), ("uncertain", "Uncertain"), ("negated", "Negated")):
        names = [str(r["name"]) for r in results if r["status"] == status]
        if names:
            parts.append(f"{label}: {', '.join(names)}.")
    return " ".join(parts) or "None of the target findings is mentioned."


# --- the runnable -------------------------------------------------------------------------------


class ReportNlpModel:
    """The runnable for the inference runtime: de-identified ORU^R01 message(s) in, findings out.
    Text that is not an HL7 v2 message (no leading MSH) is read as the report itself."""

    inputs = "text"

    def __init__(
        self,
        device: torch.device | None = None,
        findings: Iterable[Mapping[str, Any]] = CHEST_FINDINGS,
        options: NlpOptions | Mapping[str, Any] | None = None,
    ) -> None:
        self.device = device  # spaCy rules run on the CPU whatever the runtime's device
        started = time.perf_counter()
        try:
            self.nlp = ReportNLP(findings, options)
        except ValueError as exc:
            raise ModelInputError(f"the model's findings are unusable: {exc}") from None
        self.load_seconds = time.perf_counter() - started
        log.info(
            "report NLP ready: %d findings, %d phrases, %.2f s",
            len(self.nlp.findings),
            sum(len(f.phrases) for f in self.nlp.findings),
            self.load_seconds,
        )

    def __call__(self, messages: list[str]) -> dict[str, Any]:
        """ReportNLP's output for the report's narrative (several messages: their narratives joined
        by a blank line), plus `characters`, the narrative's length: the offsets index it."""
        texts = [report_text(m) for m in messages]
        text = "\n\n".join(t for t in texts if t.strip())
        if not text.strip():
            raise ModelInputError("no report text: no OBX of type TX, FT or ST and no NTE with text")
        if len(text) > self.nlp.nlp.max_length:
            raise ModelInputError(f"report text of {len(text)} characters: more than a report can be")
        output = self.nlp(text)
        output["characters"] = len(text)
        return output


def report_text(message: str) -> str:
    """The narrative of one input: an HL7 v2 message's text segments, or the text as it is."""
    if message.lstrip("\ufeff\x0b \t\r\n").startswith("MSH"):
        try:
            return report_text_from_hl7(message)
        except ValueError as exc:
            raise ModelInputError(str(exc)) from None
    return message
