"""URL roots (wiring): the FHIR facade, the OAuth2 token endpoint, FHIR Subscription notifications, HL7, health, the console."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from fhirai.api import oauth_views
from fhirai.api.views import api
from fhirai.ui import views as ui
from integrations.fhir import subscription_hook
from integrations.webhooks import inbound as hooks

urlpatterns = [
    path("fhir/", include("integrations.fhir.urls")),
    # OAuth2 for machine clients (SMART Backend Services): the token endpoint and its discovery
    path("auth/token", oauth_views.token, name="oauth-token"),
    path(".well-known/smart-configuration", oauth_views.smart_configuration_view, name="smart-configuration"),
    path("hl7/", include("integrations.hl7.urls")),
    path("dicomweb/", include("integrations.dicomweb.urls")),
    path("fhir-subscription/", subscription_hook.notification_endpoint, name="fhir-subscription"),
    path(
        "fhir-subscription/<str:rtype>/<str:rid>",
        subscription_hook.resource_endpoint,
        name="fhir-subscription-resource",
    ),
    path("hooks/<str:source>", hooks.hook, name="hook"),
    path("api/", api.urls),
    path("healthz", ui.healthz, name="healthz"),
    # The admin's own login form would bypass the console's throttled one: send it there (with ?next=).
    path("admin/login/", RedirectView.as_view(url="/login/", query_string=True)),
    path("admin/", admin.site.urls),
    path("", include("fhirai.ui.urls")),
]
