"""DIMSE status codes fhirai answers with (PS3.4 Annex B.2.3 for C-STORE, PS3.7 C for general)."""

from __future__ import annotations

SUCCESS = 0x0000
# PS3.4 B.2.3 "Refused: Out of Resources" (A7xx): the sender should retry later.
OUT_OF_RESOURCES = 0xA700
# PS3.4 B.2.3 "Error: Data Set does not match SOP Class" (A9xx).
DATASET_DOES_NOT_MATCH = 0xA900
# PS3.4 B.2.3 "Error: Cannot understand" (Cxxx).
CANNOT_UNDERSTAND = 0xC000

# PS3.4 B.2.3 "Warning: Data Set does not match SOP Class" (B007): stored, with a warning. fhirai
# answers it for a dataset it keeps but cannot process (a study, series or SOP UID missing or
# malformed): the bytes are durable (rejected area, listed in the console), the sender need not
# retry, and nothing downstream happens.
WARNING_KEPT = 0xB007
KEPT_CODES = ("missing-attribute", "invalid-uid")

# PS3.4 B.2.3 / PS3.7 C "Refused: Not Authorized" (0124): a C-STORE to the priors AE title for a
# study no prior fetch is moving.
NOT_AUTHORIZED = 0x0124

# PS3.7 C (general statuses) for N-EVENT-REPORT responses.
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112

_BY_CODE = {
    "not-requested": NOT_AUTHORIZED,
    "missing-attribute": DATASET_DOES_NOT_MATCH,
    "invalid-uid": DATASET_DOES_NOT_MATCH,
    "unparseable": CANNOT_UNDERSTAND,
}


def for_invalid(code: str) -> int:
    """The failure status for a domain InvalidInput code."""
    return _BY_CODE.get(code, CANNOT_UNDERSTAND)
