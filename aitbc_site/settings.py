"""AITBC settings: one module, driven by environment variables.

See README.md ("Configuration") for every variable. Bad values stop start-up
with an error naming the variable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from aitbc_site.env import env_bool, env_choice, env_int, env_list, env_rate, env_str, env_url

BASE_DIR = Path(__file__).resolve().parent.parent

AITBC_ENV = env_choice("AITBC_ENV", "development", ("development", "production", "test"))
PRODUCTION = AITBC_ENV == "production"

# Everything the system writes lives under the data directory.
DATA_DIR = Path(env_str("AITBC_DATA_DIR", "data") or "data")
if not DATA_DIR.is_absolute():
    DATA_DIR = BASE_DIR / DATA_DIR
DATA_DIR.mkdir(parents=True, exist_ok=True)


# The placeholders of deploy/env/*.env.example and docs: a production secret left at one
# of them is a secret everyone knows.
_PLACEHOLDERS = ("change-me", "changeme", "change_me")


def _is_placeholder(value: str | None) -> bool:
    return bool(value) and any(word in value.lower() for word in _PLACEHOLDERS)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        if PRODUCTION and (len(key) < 50 or key.startswith("django-insecure") or len(set(key)) < 5):
            raise ImproperlyConfigured("SECRET_KEY must be at least 50 random characters in production")
        if PRODUCTION and _is_placeholder(key):
            raise ImproperlyConfigured("SECRET_KEY is the example's placeholder; generate a random one")
        return key
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY is required when AITBC_ENV=production")
    path = DATA_DIR / "secret_key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    # Write the whole key to a private temporary file, then link it into place: the link
    # fails if another process got there first, so no process ever reads a half-written key.
    tmp = DATA_DIR / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(64))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text(encoding="utf-8").strip()


SECRET_KEY = _secret_key()
DEBUG = False if PRODUCTION else env_bool("DEBUG", False)
if PRODUCTION and env_bool("DEBUG", False):
    raise ImproperlyConfigured("DEBUG cannot be on when AITBC_ENV=production")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required when AITBC_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), upper=True)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "aitbc_site",
    "chain",
    "wallet",
    "marketplace",
    "provider",
    "automation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "aitbc_site.urls"
ASGI_APPLICATION = "aitbc_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite under the data directory unless DATABASE_URL says otherwise.
_DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql", "pgsql", "postgis")
_database_url = env_str("DATABASE_URL")
if _database_url is None:
    _database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / "aitbc.sqlite3")}
else:
    _scheme = _database_url.split(":", 1)[0] if ":" in _database_url else ""
    if _scheme not in _DATABASE_SCHEMES:
        raise ImproperlyConfigured(
            f"DATABASE_URL has an unsupported scheme {_scheme or '(none)'!r}; "
            "expected sqlite:///path or postgres://user@host:port/name"
        )
    try:
        _database = dj_database_url.parse(_database_url, conn_max_age=0)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from None
    if _scheme == "sqlite" and _database["NAME"] in ("", ":memory:"):
        raise ImproperlyConfigured("DATABASE_URL: an in-memory SQLite database cannot be shared between processes")

if _database["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue on busy_timeout instead of failing with
    # "database is locked" when a read transaction tries to upgrade. A ledger writer walks
    # the transaction table and its indexes at random (ids are hashes): with SQLite's
    # default 2 MiB page cache most of its pages come back through a read call and a copy
    # each time, so each connection keeps up to 64 MiB of pages and reads through mmap.
    _database["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000; "
            "PRAGMA cache_size=-65536; PRAGMA mmap_size=268435456;"
        ),
    }
    _database.setdefault("TEST", {})["NAME"] = str(DATA_DIR / "test-aitbc.sqlite3")
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: unset means embedded mode (in-memory channel layer and broker).
REDIS_URL = env_url("REDIS_URL", ("redis", "rediss", "unix"))
EMBEDDED = REDIS_URL is None

if EMBEDDED:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": env_str("AITBC_CHANNEL_PREFIX", "aitbc") or "aitbc"},
        }
    }

# Celery: Redis when REDIS_URL is set; otherwise kombu's in-memory transport,
# with the worker and beat running as threads inside the web process.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or "cache+memory://"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# In embedded mode a put on the in-memory broker wakes the worker at once
# (aitbc_site.embedded.MemoryTransport); the polling interval only bounds how long it
# sleeps between looks anyway. Redis delivers with BRPOP and needs no polling.
if EMBEDDED:
    CELERY_BROKER_TRANSPORT = "aitbc_site.embedded:MemoryTransport"
CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 1.0} if EMBEDDED else {"visibility_timeout": 3600}
# TLS (rediss://): the server's certificate is always verified, against the system's CAs
# or REDIS_CA_FILE's private CA. Every Redis client (channel layer, broker, results,
# shared_state) takes the same options, so none of them can trust less than the others.
REDIS_CA_FILE = env_str("REDIS_CA_FILE")
REDIS_CLIENT_OPTIONS: dict[str, str] = {}
if REDIS_CA_FILE and not (REDIS_URL or "").startswith("rediss://"):
    raise ImproperlyConfigured("REDIS_CA_FILE is set but REDIS_URL is not a rediss:// (TLS) URL")
if REDIS_CA_FILE and not os.access(REDIS_CA_FILE, os.R_OK):
    raise ImproperlyConfigured(f"REDIS_CA_FILE: cannot read {REDIS_CA_FILE!r}")
if REDIS_URL and REDIS_URL.startswith("rediss://"):
    import ssl

    _ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if REDIS_CA_FILE:
        _ssl["ssl_ca_certs"] = REDIS_CA_FILE
        REDIS_CLIENT_OPTIONS["ssl_ca_certs"] = REDIS_CA_FILE
    CELERY_BROKER_USE_SSL = _ssl
    CELERY_REDIS_BACKEND_USE_SSL = _ssl
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [{"address": REDIS_URL, **REDIS_CLIENT_OPTIONS}]

if PRODUCTION:
    from urllib.parse import unquote, urlsplit

    for _name, _url in (("REDIS_URL", REDIS_URL), ("DATABASE_URL", _database_url)):
        if _url and _is_placeholder(unquote(urlsplit(_url).password or "")):
            raise ImproperlyConfigured(f"{_name} still has the example's placeholder password; set the real one")
    if _is_placeholder(env_str("METRICS_TOKEN")):
        raise ImproperlyConfigured("METRICS_TOKEN is the example's placeholder; generate a random one")

# Chain node
CHAIN_MEMPOOL_MAX = env_int("AITBC_MEMPOOL_MAX", 200_000, minimum=1)
# Fault-injection switches for the process-level tests (a partition, a double signer); never in production.
TEST_HOOKS = env_bool("AITBC_TEST_HOOKS", False)
if PRODUCTION and TEST_HOOKS:
    raise ImproperlyConfigured("AITBC_TEST_HOOKS cannot be on when AITBC_ENV=production")

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "aitbc_site.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AITBC API",
    "DESCRIPTION": "Marketplace for AI inference paid in AIT on its own ledger.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's assets are served from this installation, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # Every error answer documented with its one shape; /health, /metrics and the webhook added.
        "aitbc_site.openapi.postprocess",
    ],
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

# The dashboard (server-rendered pages behind login).
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# /metrics: loopback clients, or anyone with this bearer token.
METRICS_TOKEN = env_str("METRICS_TOKEN")

# The devnet's faucet (POST /v1/faucet): configured when both files exist.
FAUCET_KEYSTORE = Path(env_str("AITBC_FAUCET_KEYSTORE") or DATA_DIR / "devnet" / "faucet.keystore.json")
FAUCET_PASSWORD_FILE = Path(env_str("AITBC_FAUCET_PASSWORD_FILE") or DATA_DIR / "devnet" / "faucet.password")
FAUCET_AMOUNT = env_int("AITBC_FAUCET_AMOUNT", 10_000_000, minimum=1)
FAUCET_PER_HOUR = env_int("AITBC_FAUCET_PER_HOUR", 20, minimum=1)

# Request rates per caller (aitbc_site/throttling.py). A batch of transactions counts as one
# request, so the default leaves the benchmarks' batches far below it.
CHAIN_SUBMIT_RATE = env_rate("AITBC_CHAIN_SUBMIT_RATE", "200/s")
MARKET_JOB_RATE = env_rate("AITBC_MARKET_JOB_RATE", "600/min")
# Reverse proxies in front of the web processes: the client's address is the one the
# outermost proxy appended to X-Forwarded-For (without proxies the header is ignored).
PROXY_COUNT = env_int("AITBC_PROXY_COUNT", 0, minimum=0, maximum=10)

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"},
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "line"},
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING" if LOG_LEVEL != "DEBUG" else "DEBUG"},
        "celery": {"level": LOG_LEVEL},
    },
}
