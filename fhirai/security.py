"""Security headers on every HTTP response (the console, the API, FHIR, DICOMweb, static files,
errors). The Content-Security-Policy allows scripts, styles, images and connections from this
origin only: the console has no inline script, no inline style and no event handler attributes
(its charts are server-drawn SVG with presentation attributes), so nothing needs 'unsafe-inline'."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # data: for the small icons Swagger UI (/api/docs) and the admin's stylesheets embed.
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    )
)


class SecurityHeadersMiddleware:
    """Adds the CSP and the browser hardening headers to each response. Place it first in
    MIDDLEWARE, so that responses made by middleware further in (static files, CSRF failures,
    401s of the token check) get them too. A view's own header wins (setdefault)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.headers = {
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": settings.SECURE_REFERRER_POLICY,
            "Cross-Origin-Opener-Policy": settings.SECURE_CROSS_ORIGIN_OPENER_POLICY,
        }

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        for name, value in self.headers.items():
            response.headers.setdefault(name, value)
        return response
