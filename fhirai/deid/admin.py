from __future__ import annotations

from django.contrib import admin

from fhirai.deid.models import VaultAccess


@admin.register(VaultAccess)
class VaultAccessAdmin(admin.ModelAdmin):
    """Who read the vault, when, for what: read-only. The vault itself is not shown anywhere."""

    list_display = ("at", "kind", "pseudonym", "purpose", "found")
    list_filter = ("kind", "purpose", "found")
    date_hierarchy = "at"

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False
