"""The console's view of FHIR Subscriptions: what each notifying subscription has told fhirai
(status, event counter, missed events) and every notification received. Read-only: these rows
are a record of what arrived; only the notifying server changes them."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from fhirai.subscriptions.models import Notification, Subscription


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Subscription)
class SubscriptionAdmin(_ReadOnly):
    list_display = (
        "reference",
        "topic",
        "status",
        "highest_event",
        "missed_count",
        "handshake_at",
        "last_heartbeat_at",
        "last_event_at",
    )
    list_filter = ("status",)
    search_fields = ("reference", "topic")
    readonly_fields = [f.name for f in Subscription._meta.fields]


@admin.register(Notification)
class NotificationAdmin(_ReadOnly):
    list_display = ("id", "received_at", "kind", "subscription", "first_event", "last_event", "status")
    list_filter = ("status", "kind")
    search_fields = ("subscription",)
    date_hierarchy = "received_at"
    readonly_fields = [f.name for f in Notification._meta.fields]
