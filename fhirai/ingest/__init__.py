"""Ingest: durable receive of DICOM instances (and, later, messages and resources)."""
