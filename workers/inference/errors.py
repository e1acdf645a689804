"""Errors of the inference runtime."""

from __future__ import annotations


class ModelInputError(Exception):
    """The model cannot run on this input (wrong series, undecodable pixels): the job fails visibly,
    no retry. The message must not carry PHI (the runtime only sees de-identified data anyway)."""
