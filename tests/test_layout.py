"""The design card's rules that a grep can check: imports flow inward, only settings.py reads the
environment, and the README's settings table names every FHIRAI_* setting."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIRING = {"fhirai/settings.py", "fhirai/urls.py", "fhirai/celery.py"}


def _python(folder: str) -> list[Path]:
    return [p for p in (ROOT / folder).rglob("*.py") if "migrations" not in p.parts]


def test_the_domain_never_imports_adapters_or_workers():
    offenders = []
    for path in _python("fhirai"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in WIRING:
            continue
        if re.search(r"^\s*(from|import)\s+(integrations|workers)\b", path.read_text(), re.M):
            offenders.append(rel)
    assert offenders == []


def test_the_core_never_imports_the_console():
    """fhirai/ui is the console, an outer layer (with the Django admin pages and the URL wiring):
    the domain, the API and the adapters may be used by it, never the other way round."""
    offenders = [
        p.relative_to(ROOT).as_posix()
        for folder in ("fhirai", "integrations", "workers")
        for p in _python(folder)
        if "ui" not in p.relative_to(ROOT).parts[1:2]
        and p.name != "admin.py"
        and p.relative_to(ROOT).as_posix() not in WIRING
        and re.search(r"^\s*(from|import)\s+fhirai\.ui\b", p.read_text(), re.M)
    ]
    assert offenders == []


def test_only_settings_reads_the_environment():
    offenders = [
        p.relative_to(ROOT).as_posix()
        for folder in ("fhirai", "integrations", "workers")
        for p in _python(folder)
        if re.search(r"os\.(environ|getenv)", p.read_text())
        and p.name not in ("settings.py", "celery.py", "wsgi.py", "asgi.py")
    ]
    assert offenders == []


def test_readme_lists_every_fhirai_setting():
    names = set(re.findall(r"\"(FHIRAI_[A-Z_]+)\"", (ROOT / "fhirai/settings.py").read_text()))
    readme = (ROOT / "README.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert missing == []
