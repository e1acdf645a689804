"""Results: FHIR R4 reports built from model output, stored, served and written back."""
