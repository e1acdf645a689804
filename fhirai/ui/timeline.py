"""How a timeline reads on an operator's page (one line per step: time, step, detail, error)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.utils.html import format_html_join
from django.utils.safestring import SafeString


def timeline_html(steps: Iterable[tuple[str, datetime, str, str]]) -> SafeString:
    """(event, at, detail, error) rows as escaped HTML lines (the error in italics)."""
    return format_html_join(
        "",
        "<div>{} &nbsp; <b>{}</b> {} <em>{}</em></div>",  # no style attribute: the CSP forbids it
        ((at.isoformat(timespec="milliseconds"), event, detail, error) for event, at, detail, error in steps),
    )
