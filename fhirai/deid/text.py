"""Free text de-identification with Presidio: NER (a spaCy English pipeline, FHIRAI_DEID_NLP_MODEL,
installed as a package: nothing is downloaded at run time), Presidio's pattern recognizers, the
site's own identifier formats (FHIRAI_DEID_ID_PATTERNS), and the record's own known identifiers
as ad-hoc recognizers, so the patient's own name, MRN or phone number is caught even where the
NER model misses it. Every finding is replaced by its category in brackets, e.g. [PERSON].

One engine per process (loading the pipeline takes seconds); every protocol's free text goes
through `text_scrub`."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings

# Presidio entities worth removing from clinical free text (US/UK-specific ID recognizers add
# false positives on clinical numbers; the site's own ID formats come from settings instead).
ENTITIES = [
    "PERSON",
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "DATE_TIME",
    "LOCATION",
    "US_SSN",
    "IP_ADDRESS",
    "URL",
    "MEDICAL_LICENSE",
]
KNOWN_NAME, KNOWN_ID, KNOWN_PHONE, KNOWN_ADDRESS, KNOWN_DATE = (
    "KNOWN_NAME",
    "KNOWN_ID",
    "KNOWN_PHONE",
    "KNOWN_ADDRESS",
    "KNOWN_DATE",
)
# What a finding is called in the output: known identifiers by what they are.
LABEL = {
    KNOWN_NAME: "PERSON",
    KNOWN_ID: "ID",
    KNOWN_PHONE: "PHONE_NUMBER",
    KNOWN_ADDRESS: "LOCATION",
    KNOWN_DATE: "DATE_TIME",
}
TITLED_PERSON = (
    r"\b(?:Dr|Drs|Mr|Mrs|Ms|Miss|Prof|Sister|Nurse)\.?\s+"
    r"(?:[A-Z][a-z]*\.?\s+)?[A-Z][A-Za-z'\-]+(?:\s+(?:van|von|de|der|da|del|le|la|[A-Z][A-Za-z'\-]+)){0,3}"
)
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]  # fmt: skip


@dataclass(frozen=True)
class Known:
    """The record's own identifiers, from its structured fields (DICOM, PID/NK1, Patient)."""

    names: tuple[str, ...] = ()  # patient, relatives, physicians: "Family^Given" or "Given Family"
    identifiers: tuple[str, ...] = ()  # MRNs, accession numbers, other IDs
    phones: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()  # street lines, cities, postal codes
    dates: tuple[str, ...] = ()  # birth dates: YYYYMMDD or YYYY-MM-DD

    def __or__(self, other: Known) -> Known:
        return Known(
            *(tuple(dict.fromkeys(a + b)) for a, b in zip(self._parts(), other._parts(), strict=True))
        )

    def _parts(self) -> tuple[tuple[str, ...], ...]:
        return (self.names, self.identifiers, self.phones, self.addresses, self.dates)


@dataclass
class Scrubbed:
    text: str
    findings: list[tuple[str, int, int]] = field(default_factory=list)  # (category, start, end) in the input


_lock = threading.Lock()
_engines: dict[str, object] = {}


def analyzer_engine():  # noqa: ANN202 - presidio types are imported lazily
    """The process's Presidio analyzer (built on first use: loading spaCy takes seconds)."""
    model = settings.FHIRAI_DEID_NLP_MODEL
    with _lock:
        if model not in _engines:
            from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
            from presidio_analyzer.nlp_engine import NlpEngineProvider

            provider = NlpEngineProvider(
                nlp_configuration={
                    "nlp_engine_name": "spacy",
                    "models": [{"lang_code": "en", "model_name": model}],
                }
            )
            engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
            # A capitalised name after a title is a person whatever the NER model thinks of it.
            engine.registry.add_recognizer(
                PatternRecognizer(
                    supported_entity="PERSON",
                    name="TitledPersonRecognizer",
                    patterns=[Pattern(name="titled", regex=TITLED_PERSON, score=0.9)],
                )
            )
            for name, regex in settings.FHIRAI_DEID_ID_PATTERNS.items():
                engine.registry.add_recognizer(
                    PatternRecognizer(
                        supported_entity=f"SITE_{name.upper()}",
                        patterns=[Pattern(name=name, regex=regex, score=0.9)],
                    )
                )
            _engines[model] = engine
        return _engines[model]


def _anonymizer():  # noqa: ANN202
    with _lock:
        if "anonymizer" not in _engines:
            from presidio_anonymizer import AnonymizerEngine

            _engines["anonymizer"] = AnonymizerEngine()
        return _engines["anonymizer"]


def engine_warm() -> None:
    """Load the pipeline now (worker start) rather than on the first message."""
    analyzer_engine()
    _anonymizer()


def text_scrub(text: str, known: Known = Known()) -> Scrubbed:
    """`text` with every identifier found replaced by its category, and where they were."""
    if not text or not text.strip():
        return Scrubbed(text)
    from presidio_anonymizer.entities import OperatorConfig

    analyzer = analyzer_engine()
    recognizers = ad_hoc_recognizers(known)
    entities = ENTITIES + [f"SITE_{n.upper()}" for n in settings.FHIRAI_DEID_ID_PATTERNS]
    entities += [r.supported_entities[0] for r in recognizers]
    results = analyzer.analyze(
        text=text,
        language="en",
        entities=entities,
        ad_hoc_recognizers=recognizers or None,
        score_threshold=settings.FHIRAI_DEID_TEXT_THRESHOLD,
    )
    results = [r for r in results if not _clinical_false_positive(text, r)]
    if not results:
        return Scrubbed(text)
    operators = {
        r.entity_type: OperatorConfig("replace", {"new_value": f"[{_label(r.entity_type)}]"}) for r in results
    }
    out = _anonymizer().anonymize(text=text, analyzer_results=results, operators=operators)
    findings = sorted((_label(r.entity_type), r.start, r.end) for r in results)
    return Scrubbed(out.text, [(c, s, e) for c, s, e in findings])


# Words of radiology requests and descriptors that the NER model takes for names or places in
# short, capitalised texts ("Lung 1mm", "Chest Abd Pelvis"): a NER finding made only of these is
# not an identifier. Known identifiers (the record's own) are never filtered.
CLINICAL_WORDS = frozenset(
    """
    abd abdomen abdominal acute adrenal angio angiography ankle aorta aortic apex arm arterial artery
    axial axilla bilateral biopsy bladder bone bones bowel brain breast bronchus calcium cardiac carotid
    cervical chest coronal colon contrast cranial ct cta cxr delayed dual energy elbow emphysema
    enhanced extremity femur fibrosis foot follow followup hand head heart hip hrct inferior kidney
    knee lateral left liver lobe low lower lumbar lung lungs mediastinum mip mpr mr mri nodule nodules
    neck oblique pa pancreas pelvis pet phase pleura portal post pre pulmonary recon renal right rll
    rml rul lul lll sagittal scan scout screening series shoulder sinus sinuses skull soft spine
    spleen standard study superior thin thoracic thorax tissue topogram trachea upper us venous view
    volume wrist xr
    """.split()
)


def _clinical_false_positive(text: str, result) -> bool:  # noqa: ANN001 - presidio RecognizerResult
    if result.entity_type not in ("PERSON", "LOCATION") or result.score >= 1.0:
        return False
    words = [w.strip(".,;:()[]/-") for w in text[result.start : result.end].split()]
    words = [w for w in words if w and not any(ch.isdigit() for ch in w)]  # "1mm", "5.0": measures
    return all(w.lower() in CLINICAL_WORDS or len(w) < 2 for w in words)


def _label(entity: str) -> str:
    if entity.startswith("SITE_"):
        return "ID"
    return LABEL.get(entity, entity)


def ad_hoc_recognizers(known: Known) -> list:  # noqa: ANN202
    from presidio_analyzer import Pattern, PatternRecognizer

    out = []
    names = name_variants(known.names)
    if names:
        out.append(PatternRecognizer(supported_entity=KNOWN_NAME, deny_list=names, deny_list_score=1.0))
    patterns = [
        (KNOWN_ID, [_loose(v) for v in id_variants(known.identifiers)]),
        (KNOWN_PHONE, [_digits_regex(p) for p in known.phones if sum(c.isdigit() for c in p) >= 6]),
        (KNOWN_ADDRESS, [_loose(a) for a in known.addresses if len(a.strip()) >= 3]),
        (KNOWN_DATE, [re.escape(d) for d in date_variants(known.dates)]),
    ]
    for entity, regexes in patterns:
        regexes = [r for r in regexes if r]
        if regexes:
            out.append(
                PatternRecognizer(
                    supported_entity=entity,
                    patterns=[
                        Pattern(name=f"{entity}-{i}", regex=r, score=1.0) for i, r in enumerate(regexes)
                    ],
                )
            )
    return out


def name_variants(names: Iterable[str]) -> list[str]:
    """Each name whole (DICOM/HL7 `Family^Given^Middle` read as words too) and each part of three
    letters or more: the patient's family name alone in a note is still the patient."""
    out: dict[str, None] = {}
    for name in names:
        parts = [p.strip() for p in re.split(r"[\^,]", name) if p.strip()]
        words = [w for p in parts for w in p.split()]
        if not words:
            continue
        out[" ".join(words)] = None
        if len(parts) >= 2:
            out[" ".join([*parts[1:2], parts[0]])] = None  # Given Family
        for word in words:
            if len(word.strip(".")) >= 3:
                out[word.strip(".")] = None
    return list(out)


def id_variants(identifiers: Iterable[str]) -> list[str]:
    """Each identifier, and its digits alone when it is a prefix plus a long number (MRN-7734921
    is also written 7734921)."""
    out: dict[str, None] = {}
    for ident in identifiers:
        ident = ident.strip()
        if len(ident) < 3:
            continue
        out[ident] = None
        digits = re.sub(r"^\D+", "", ident)
        if len(digits) >= 5 and digits != ident:
            out[digits] = None
    return list(out)


def date_variants(dates: Iterable[str]) -> list[str]:
    """A date in the renderings notes use: ISO, US and European numeric, and with the month name."""
    out: dict[str, None] = {}
    for raw in dates:
        digits = raw.replace("-", "")
        if len(digits) != 8 or not digits.isdigit():
            continue
        try:
            d = date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            continue
        month = MONTHS[d.month - 1]
        for text in (
            d.isoformat(),
            digits,
            f"{d.month:02d}/{d.day:02d}/{d.year}",
            f"{d.month}/{d.day}/{d.year}",
            f"{d.day:02d}.{d.month:02d}.{d.year}",
            f"{d.day:02d}/{d.month:02d}/{d.year}",
            f"{month} {d.day}, {d.year}",
            f"{d.day} {month} {d.year}",
            f"{d.day} {month[:3]} {d.year}",
            f"{month[:3]} {d.day}, {d.year}",
        ):
            out[text] = None
    return list(out)


def _loose(value: str) -> str:
    """A value as a case-insensitive whole-word regex, any run of spaces/punctuation between words."""
    words = [re.escape(w) for w in re.split(r"[\s,\^]+", value.strip()) if w]
    if not words:
        return ""
    return r"(?i)(?<![\w])" + r"[\s,.\-]*".join(words) + r"(?![\w])"


def _digits_regex(phone: str) -> str:
    """A phone number's digits with any separators between them (555-201-3344, (555) 201 3344)."""
    digits = [d for d in phone if d.isdigit()]
    return r"(?<!\d)" + r"[\s().\-/]*".join(digits) + r"(?!\d)"
