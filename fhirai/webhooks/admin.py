"""Django admin for subscriptions and the delivery outbox (the console builds its own pages; this
is the fallback view), with replay of dead deliveries as an action."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet

from fhirai.webhooks.models import WebhookDelivery, WebhookDeliveryState, WebhookSubscription
from fhirai.webhooks.outbox import webhook_replay


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    list_display = ("name", "url", "enabled", "include_phi", "created_at")
    list_filter = ("enabled", "include_phi")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "subscription", "event_type", "state", "attempts", "last_status", "created_at")
    list_filter = ("state", "event_type")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["replay"]

    @admin.action(description="Replay dead deliveries")
    def replay(self, request: Any, queryset: QuerySet[WebhookDelivery]) -> None:
        ids = queryset.filter(state=WebhookDeliveryState.DEAD).values_list("pk", flat=True)
        count = sum(webhook_replay(pk) for pk in ids)
        self.message_user(request, f"{count} delivery(ies) queued again", messages.SUCCESS)
