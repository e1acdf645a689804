"""Burned-in text in pixel data (PS3.15 E.3.1 Clean Pixel Data Option).

An instance is at risk when it says so (BurnedInAnnotation YES), when its modality is one that
usually carries text in the image (FHIRAI_DEID_BURNED_IN_MODALITIES: ultrasound, secondary
capture, screenshots), or when it is a Secondary Capture object. With the `clean-pixel-data`
option its text is found by OCR (Debian's tesseract-ocr through presidio-image-redactor) and
painted over: every word (FHIRAI_DEID_PIXEL_MODE=all-text, the default: an AI model needs no text)
or only the words Presidio finds identifying, with the record's own identifiers as ad-hoc
recognizers (phi). Without the option an at-risk instance is withheld from the inference tier."""

from __future__ import annotations

import threading

from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from fhirai.deid.text import Known, ad_hoc_recognizers, analyzer_engine

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_lock = threading.Lock()
_engine: list[object] = []


class Withheld(Exception):  # noqa: N818 - a decision, not a failure
    """The instance may carry identifying text in its pixels and the profile does not clean them."""


def at_risk(ds: Dataset) -> bool:
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return True
    if str(ds.get("Modality", "")).upper() in settings.FHIRAI_DEID_BURNED_IN_MODALITIES:
        return True
    return str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE)


def _redactor():  # noqa: ANN202 - presidio types are imported lazily
    with _lock:
        if not _engine:
            from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine

            # Our analyzer (the installed spaCy pipeline), never presidio's default that would
            # try to download a model.
            image_analyzer = ImageAnalyzerEngine(analyzer_engine=analyzer_engine())
            _engine.append(DicomImageRedactorEngine(image_analyzer_engine=image_analyzer))
        return _engine[0]


def pixels_clean(ds: Dataset, known: Known) -> Dataset:
    """The instance with its burned-in text painted over, pixel data uncompressed (Explicit VR
    Little Endian); BurnedInAnnotation becomes NO."""
    from presidio_analyzer import Pattern, PatternRecognizer

    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    recognizers = ad_hoc_recognizers(known)
    if settings.FHIRAI_DEID_PIXEL_MODE == "all-text":
        recognizers.append(
            PatternRecognizer(
                supported_entity="ANY_TEXT", patterns=[Pattern(name="word", regex=r"\S{2,}", score=1.0)]
            )
        )
    redacted = _redactor().redact(
        ds,
        fill="contrast",
        padding_width=10,
        use_metadata=True,
        ad_hoc_recognizers=recognizers,
        score_threshold=settings.FHIRAI_DEID_TEXT_THRESHOLD,
    )
    redacted.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    redacted.BurnedInAnnotation = "NO"
    return redacted
