"""Audit: the per-item timeline of hand-offs."""
