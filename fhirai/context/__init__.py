"""The clinical context a study is read in: patients and orders from the EHR (HL7 v2, later FHIR)."""
