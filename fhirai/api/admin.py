"""OAuth2 clients in the Django admin: listed and revocable. Registering stays with
`python manage.py oauth_client_register`, which checks the keys and shows a secret once."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from fhirai.api.models import OAuthClient


@admin.register(OAuthClient)
class OAuthClientAdmin(admin.ModelAdmin):
    list_display = ("name", "client_id", "role", "scope", "created_at", "last_used_at", "revoked_at")
    list_filter = ("role",)
    search_fields = ("name", "client_id")
    readonly_fields = [f.name for f in OAuthClient._meta.fields]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # revoked, never deleted: the audit trail names it

    @admin.action(description="Revoke the selected clients (their tokens stop working)")
    def revoke(self, request, queryset) -> None:  # type: ignore[no-untyped-def]
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"revoked {count} client(s)", messages.SUCCESS)
