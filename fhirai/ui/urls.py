"""The console's pages (namespace "console")."""

from __future__ import annotations

from django.urls import path

from fhirai.ui import views

app_name = "console"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("items/", views.worklist, name="worklist"),
    path("items/retry-failed", views.bulk_retry, name="bulk-retry"),
    path("items/study/<int:study_id>/", views.study_page, name="study"),
    path("items/study/<int:study_id>/preview.png", views.study_preview, name="study-preview"),
    path("items/study/<int:study_id>/retry", views.study_retry, name="study-retry"),
    path("items/study/<int:study_id>/replay", views.study_replay, name="study-replay"),
    path("items/message/<int:message_id>/", views.message_page, name="message"),
    path("items/message/<int:message_id>/retry", views.message_retry, name="message-retry"),
    path("items/message/<int:message_id>/replay", views.message_replay, name="message-replay"),
    path("items/report/<int:report_id>/", views.report_page, name="report"),
    path("items/report/<int:report_id>/retry", views.report_retry, name="report-retry"),
    path("deliveries/<int:delivery_id>/retry", views.delivery_retry, name="delivery-retry"),
    path("config/", views.config, name="config"),
    path("config/destinations", views.destination_save, name="destination-save"),
    path("config/destinations/action", views.destination_action, name="destination-action"),
    path("config/models/<int:model_id>", views.model_toggle, name="model-toggle"),
    path("config/models/<int:model_id>/accepts", views.model_accepts, name="model-accepts"),
    path("config/deid", views.profile_create, name="profile-create"),
    path("config/deid/<int:version_id>/activate", views.profile_activate, name="profile-activate"),
    path("config/sources", views.source_rule, name="source-rule"),
    path("config/webhooks/new", views.subscription_edit, name="subscription-new"),
    path("config/webhooks/<int:subscription_id>", views.subscription_edit, name="subscription-edit"),
    path("webhooks/", views.webhooks, name="webhooks"),
    path("webhooks/<int:delivery_id>/replay", views.webhook_replay_view, name="webhook-replay"),
    path("audit/", views.audit, name="audit"),
]
