"""SMART system scopes (SMART App Launch 2, "Scopes and Launch Context"): what a machine client's
access token allows on the FHIR facade, by resource type and interaction.

A scope is `system/<Type or *>.<permissions>`: the v2 permissions are a subset of `cruds` in that
order (c create, r read and vread, u update, d delete, s search and history); the v1 forms
`read` (= rs), `write` (= cud) and `*` (= cruds) are accepted too. `patient/` and `user/` scopes
need a launch context a backend service does not have, and granular v2 scopes (`?category=...`)
would filter inside a type, which the facade cannot do: neither is ever granted.

A client's token gets the requested scopes narrowed by the scopes registered for the client and by
its role (the ceiling, ROLE_CEILING); the facade then checks role and scope on every interaction."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fhirai.api.models import Role

PERMISSIONS = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
SCOPE = re.compile(r"system/(\*|[A-Z][A-Za-z]{0,63})\.(\*|read|write|c?r?u?d?s?)")

# The most a client of each role can be granted. The facade's role rules (fhirai.api.auth.fhir_roles)
# are checked as well: an operator's system/*.rs still reads no AuditEvent, an auditor's only it.
ROLE_CEILING = {
    Role.ADMIN: "system/*.cruds",
    Role.OPERATOR: "system/*.cruds",
    Role.AUDITOR: "system/AuditEvent.rs",
    Role.VIEWER: "",  # every FHIR type but AuditEvent is identified data: none for a viewer
}


@dataclass(frozen=True)
class Scope:
    """One system scope: a resource type ("*" for all) and the interactions it allows."""

    rtype: str
    permissions: str  # a subsequence of "cruds", never empty
    text: str  # as the client wrote it (v1 or v2), or the v2 form when narrowed

    def allows(self, rtype: str, interaction: str) -> bool:
        return interaction in self.permissions and self.rtype in ("*", rtype)

    def narrow(self, other: Scope) -> Scope | None:
        """What both this scope and `other` allow, or None. Keeps this scope's own text when
        nothing was taken away, so a v1 request is answered in v1."""
        if self.rtype != "*" and other.rtype != "*" and self.rtype != other.rtype:
            return None
        rtype = other.rtype if self.rtype == "*" else self.rtype
        permissions = "".join(p for p in PERMISSIONS if p in self.permissions and p in other.permissions)
        if not permissions:
            return None
        if rtype == self.rtype and permissions == self.permissions:
            return self
        return Scope(rtype, permissions, f"system/{rtype}.{permissions}")


def scope_parse(text: str) -> Scope | None:
    """One scope token as a Scope, or None when it is not a system scope this server knows."""
    match = SCOPE.fullmatch(text)
    if match is None:
        return None
    rtype, raw = match.groups()
    permissions = V1.get(raw, raw)
    if not permissions:
        return None
    return Scope(rtype, permissions, text)


def scopes_parse(text: str) -> tuple[Scope, ...]:
    """The known system scopes in a space-separated scope string (unknown ones are left out)."""
    return tuple(s for s in (scope_parse(t) for t in text.split()) if s is not None)


def scopes_grant(requested: str, *, allowed: str, role: str) -> tuple[Scope, ...]:
    """The scopes to grant: each requested scope narrowed by the client's allowed scopes and by its
    role's ceiling (RFC 6749 3.3: the server may grant less than asked and says what it granted)."""
    limits = [
        narrowed
        for a in scopes_parse(allowed)
        for c in scopes_parse(ROLE_CEILING.get(role, ""))
        if (narrowed := a.narrow(c)) is not None
    ]
    granted: list[Scope] = []
    for wanted in scopes_parse(requested):
        for limit in limits:
            narrowed = wanted.narrow(limit)
            if narrowed is not None and narrowed not in granted:
                granted.append(narrowed)
    return tuple(granted)


def scopes_text(scopes: tuple[Scope, ...]) -> str:
    return " ".join(s.text for s in scopes)


def scopes_allow(scopes: tuple[Scope, ...], rtype: str, interaction: str) -> bool:
    """Whether any of the scopes allows this interaction (one of "cruds") on this type."""
    return any(s.allows(rtype, interaction) for s in scopes)
