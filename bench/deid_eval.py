"""De-identification evaluation: a generated corpus (fixed seed) of DICOM instances, HL7 v2 ORU
messages and FHIR resources with known injected identifiers, run through fhirai's engine.

Reports
  - leaks: injected structured identifiers (names, IDs, birth dates, phones, addresses) found in
    what would reach the inference tier (de-identified DICOM bytes; de-identified HL7/FHIR text);
    the patient's own name anywhere in the output is counted separately;
  - free text: per-category recall and precision of the spans found in the notes (a gold span is
    recalled when none of its characters survives; a finding is precise when it overlaps a gold span);
  - throughput: DICOM headers/s, notes/s and KB/s of free text, on one core.

Run: .venv/bin/python bench/deid_eval.py [--patients 200] [--options clean-descriptors,...] [--json]
(needs the Django settings: uses tests.settings unless DJANGO_SETTINGS_MODULE is set; no database)."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from pydicom import dcmread  # noqa: E402

from fhirai.deid.fhir import resource_deidentify  # noqa: E402
from fhirai.deid.hl7v2 import message_deidentify  # noqa: E402
from fhirai.deid.profile import DeidProfile, dataset_deidentify  # noqa: E402
from fhirai.deid.text import Known, text_scrub  # noqa: E402

GIVEN = ["Alma", "Brunhild", "Chidi", "Dagny", "Eero", "Fatima", "Gunnar", "Hiroshi", "Ines", "Jovan",
         "Kwame", "Liesel", "Marisol", "Nnamdi", "Oksana", "Pradeep", "Quentin", "Rosalind", "Siobhan",
         "Tomasz", "Ulrike", "Valentina", "Wendell", "Xiomara", "Yusuf", "Zofia", "Mary", "John", "Grace"]  # fmt: skip
FAMILY = ["Testperson", "Zyxqual", "Okonkwo", "Van der Berg", "Nakamura", "Abernathy", "Kowalczyk",
          "Haddad", "Lindqvist", "Moreau", "Oyelaran", "Petrakis", "Quispe", "Rasmussen", "Szabo",
          "Thistlewood", "Ugarte", "Vashchenko", "Whitlock", "Young", "Brown", "Wood", "Stone"]  # fmt: skip
STREETS = ["Elm Street", "Harbour Road", "Quarry Lane", "Maple Avenue", "Birchwood Close", "King Street"]
CITIES = ["Springfield", "Riverton", "Lakeside", "Brookhaven", "Fairview", "Ashford"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]  # fmt: skip
CLINICAL = [
    "Mild centrilobular emphysema in both upper lobes.",
    "No suspicious pulmonary nodule.",
    "Stable 4 mm nodule in the right lower lobe.",
    "Heart size normal. No pleural effusion.",
    "Degenerative changes of the thoracic spine.",
    "Compared with the prior CT chest, no interval change.",
    "Recommend follow-up low-dose CT in 12 months.",
    "Coronary artery calcification is present.",
]


@dataclass
class Person:
    given: str
    family: str
    mrn: str
    accession: str
    phone: str
    street: str
    city: str
    birth: tuple[int, int, int]
    relative: str

    @property
    def known(self) -> Known:
        y, m, d = self.birth
        return Known(
            names=(f"{self.family}^{self.given}", self.relative),
            identifiers=(self.mrn, self.accession),
            phones=(self.phone,),
            addresses=(self.street, self.city),
            dates=(f"{y:04d}{m:02d}{d:02d}",),
        )


@dataclass
class Note:
    text: str
    gold: list[tuple[str, int, int]] = field(default_factory=list)  # (category, start, end)

    def add(self, piece: str, category: str | None = None) -> None:
        start = len(self.text)
        self.text += piece
        if category:
            self.gold.append((category, start, start + len(piece)))


def person(rng: random.Random) -> Person:
    digits = "".join(rng.choice("0123456789") for _ in range(7))
    return Person(
        given=rng.choice(GIVEN),
        family=rng.choice(FAMILY),
        mrn=f"MRN-{digits}",
        accession=f"ACC-{rng.randint(10000, 99999)}",
        phone=f"555-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        street=f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
        city=rng.choice(CITIES),
        birth=(rng.randint(1930, 2005), rng.randint(1, 12), rng.randint(1, 28)),
        relative=f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
    )


def note(p: Person, rng: random.Random) -> Note:
    """A clinical note with the person's identifiers injected in the renderings notes use."""
    y, m, d = p.birth
    n = Note("")
    n.add(rng.choice(["Patient ", "Pt ", "", "Name: "]))
    n.add(
        rng.choice(
            [f"{p.given} {p.family}", f"{p.family}, {p.given}", f"{p.given.upper()} {p.family.upper()}"]
        ),
        "NAME",
    )
    n.add(" (MRN ")
    n.add(rng.choice([p.mrn, p.mrn[4:]]), "ID")
    n.add(", DOB ")
    n.add(
        rng.choice(
            [
                f"{m:02d}/{d:02d}/{y}",
                f"{y}-{m:02d}-{d:02d}",
                f"{MONTHS[m - 1]} {d}, {y}",
                f"{d:02d}.{m:02d}.{y}",
            ]
        ),
        "DATE",
    )
    n.add("). ")
    n.add(rng.choice(CLINICAL) + " ")
    n.add("Accession ")
    n.add(p.accession, "ID")
    n.add(". ")
    n.add(rng.choice(CLINICAL) + " ")
    n.add(rng.choice(["Results discussed with ", "Called ", "Spoke with "]))
    honorific = rng.choice(["Mrs ", "Mr ", "Dr ", ""])
    n.add(honorific)
    n.add(p.family if honorific else p.given, "NAME")
    n.add(" at ")
    digits = "".join(c for c in p.phone if c.isdigit())
    n.add(
        rng.choice(
            [
                p.phone,
                f"({digits[:3]}) {digits[3:6]} {digits[6:]}",
                f"{digits[:3]}.{digits[3:6]}.{digits[6:]}",
            ]
        ),
        "PHONE",
    )
    n.add(". Lives at ")
    n.add(p.street, "ADDRESS")
    n.add(", ")
    n.add(p.city, "ADDRESS")
    n.add(". ")
    n.add(rng.choice(CLINICAL) + " Read by Dr ")
    n.add(f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}", "NAME")  # not in the record: NER must find it
    n.add(".")
    return n  # fmt: skip


def evaluate_notes(notes: list[tuple[Note, Known]]) -> dict[str, dict[str, float]]:
    per: dict[str, dict[str, int]] = {}
    precise = total_findings = 0
    start = time.perf_counter()
    chars = 0
    for n, known in notes:
        out = text_scrub(n.text, known)
        chars += len(n.text)
        covered = [False] * len(n.text)
        for _, s, e in out.findings:
            for i in range(s, e):
                covered[i] = True
        for category, s, e in n.gold:
            stats = per.setdefault(category, {"gold": 0, "recalled": 0})
            stats["gold"] += 1
            if all(covered[i] or n.text[i] in " ,.-()/" for i in range(s, e)):
                stats["recalled"] += 1
        for _, s, e in out.findings:
            total_findings += 1
            if any(not (e <= gs or s >= ge) for _, gs, ge in n.gold):
                precise += 1
    elapsed = time.perf_counter() - start
    report = {c: {"recall": v["recalled"] / v["gold"], "gold": v["gold"]} for c, v in sorted(per.items())}
    report["_all"] = {
        "precision": precise / total_findings if total_findings else 1.0,
        "findings": total_findings,
        "notes_per_s": len(notes) / elapsed,
        "kb_per_s": chars / 1024 / elapsed,
    }
    return report


def dicom_corpus(people: list[Person], template: bytes) -> list[tuple[bytes, Person]]:
    out = []
    for p in people:
        ds = dcmread(BytesIO(template))
        y, m, d = p.birth
        ds.PatientName = f"{p.family}^{p.given}"
        ds.PatientID, ds.AccessionNumber = p.mrn, p.accession
        ds.PatientBirthDate = f"{y:04d}{m:02d}{d:02d}"
        ds.PatientTelephoneNumbers, ds.PatientAddress = p.phone, f"{p.street}, {p.city}"
        ds.StudyDescription = f"CT chest {p.family} {p.mrn}"
        ds.ImageComments = f"Patient {p.given} {p.family}, call {p.phone}"
        ds.OtherPatientNames = p.relative
        block = ds.private_block(0x0011, "SITE PRIVATE", create=True)
        block.add_new(0x01, "LO", f"{p.family} {p.mrn}")
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((buf.getvalue(), p))
    return out


def structured_secrets(p: Person) -> dict[str, str]:
    y, m, d = p.birth
    return {
        "family": p.family,
        "given": p.given,
        "mrn": p.mrn[4:],
        "accession": p.accession,
        "phone": p.phone,
        "street": p.street,
        "city": p.city,
        "birth": f"{y:04d}{m:02d}{d:02d}",
    }


def dicom_header(blob: bytes) -> bytes:
    """The dataset without its pixel data (random pixel bytes would "contain" short names)."""
    ds = dcmread(BytesIO(blob))
    del ds.PixelData
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _present(value: str, text: str) -> bool:
    """`value` as a whole word in `text` (PRIMARY does not contain the name Mary)."""
    return re.search(rf"(?<![a-z0-9]){re.escape(value.lower())}(?![a-z0-9])", text) is not None


def leaks_in(blob: bytes, p: Person) -> tuple[int, bool]:
    """How many of the person's structured identifiers are in `blob`, and whether their name is."""
    text = blob.decode("latin-1").lower()
    leaked = [k for k, v in structured_secrets(p).items() if _present(v, text)]
    return len(leaked), _present(p.family, text) or _present(p.given, text)


def hl7_message(p: Person, n: Note) -> str:
    y, m, d = p.birth
    text = n.text.replace("|", " ").replace("^", " ").replace("~", " ").replace("\\", " ").replace("&", " ")
    return (
        "\r".join(
            [
                "MSH|^~\\&|RIS|HOSP|FHIRAI|HOSP|20241105103000||ORU^R01^ORU_R01|M1|P|2.5.1",
                f"PID|1||{p.mrn}^^^HOSP^MR||{p.family}^{p.given}||{y:04d}{m:02d}{d:02d}|F|||{p.street}^^{p.city}||{p.phone}",
                f"NK1|1|{p.relative}|SPO",
                f"OBR|1|{p.accession}|{p.accession}|24627-2^CT Chest^LN",
                f"OBX|1|TX|24627-2^CT Chest^LN||{text}||||||F",
            ]
        )
        + "\r"
    )


def fhir_resources(p: Person, n: Note) -> list[dict]:
    y, m, d = p.birth
    patient = {
        "resourceType": "Patient",
        "id": p.mrn,
        "identifier": [{"system": "urn:oid:1.2.3", "value": p.mrn}],
        "name": [{"family": p.family, "given": [p.given]}],
        "telecom": [{"system": "phone", "value": p.phone}],
        "address": [{"line": [p.street], "city": p.city}],
        "birthDate": f"{y:04d}-{m:02d}-{d:02d}",
    }
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"text": "CT chest"},
        "subject": {"reference": f"Patient/{p.mrn}", "display": f"{p.given} {p.family}"},
        "conclusion": n.text,
    }
    return [patient, report]


def run(patients: int, options: frozenset[str], seed: int = 20261125) -> dict:
    rng = random.Random(seed)
    people = [person(rng) for _ in range(patients)]
    notes = [(note(p, rng), p.known) for p in people]
    profile = DeidProfile(name="eval", options=options)
    from tests.support.phantom import ct_phantom

    template = ct_phantom(slices=1).files[0]
    corpus = dicom_corpus(people, template)
    start = time.perf_counter()
    structured_leaks = own_name = 0
    for raw, p in corpus:
        out, _ = dataset_deidentify(raw, profile=profile)
        count, name = leaks_in(dicom_header(out), p)
        structured_leaks += count
        own_name += name
    dicom_s = time.perf_counter() - start
    hl7_leaks = hl7_name = fhir_leaks = fhir_name = 0
    for (n, _), p in zip(notes, people, strict=True):
        count, name = leaks_in(message_deidentify(hl7_message(p, n), profile).message.encode(), p)
        hl7_leaks += count
        hl7_name += name
        for resource in fhir_resources(p, n):
            clean = resource_deidentify(resource, profile, known=p.known)
            count, name = leaks_in(json.dumps(clean, ensure_ascii=False).encode(), p)
            fhir_leaks += count
            fhir_name += name
    return {
        "patients": patients,
        "options": sorted(options),
        "dicom": {
            "instances": len(corpus),
            "structured_leaks": structured_leaks,
            "own_name_leaks": own_name,
            "headers_per_s": len(corpus) / dicom_s,
        },
        "hl7": {"messages": patients, "structured_leaks": hl7_leaks, "own_name_leaks": hl7_name},
        "fhir": {"resources": 2 * patients, "structured_leaks": fhir_leaks, "own_name_leaks": fhir_name},
        "free_text": evaluate_notes(notes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--options", default="clean-descriptors")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    options = frozenset(o for o in args.options.split(",") if o)
    result = run(args.patients, options, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"de-identification evaluation: {result['patients']} patients, options {', '.join(result['options']) or 'none'}"
    )
    for kind in ("dicom", "hl7", "fhir"):
        print(f"  {kind}: {result[kind]}")
    print("  free text (notes):")
    for category, stats in result["free_text"].items():
        print(
            f"    {category}: "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        )


if __name__ == "__main__":
    main()
