"""``python manage.py provider serve``: the provider daemon (the seed's ``aitbc ai serve``).

See docs/provider.md for the flags, the environment and what each backend needs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from aitbc_site.env import env_raw, env_str, env_url
from provider.backends import BACKENDS, Backend, BackendError, ModelNotFound
from provider.daemon import DaemonConfig, Offer, ProviderDaemon
from provider.keys import KeyLoadError, load_or_create_key

DEFAULT_MODELS = {"ollama": "qwen3:8b", "llamacpp": "smollm2:135m"}
# The embedded model runs one generation at a time (one llama.cpp context); HTTP backends queue on their side.
DEFAULT_CONCURRENCY = {"ollama": 2, "openai": 2, "llamacpp": 1}
DEFAULT_CONTEXT = {"ollama": 4096, "openai": 4096, "llamacpp": 2048}


def default_coordinator_url(data_dir: Path) -> str | None:
    """``AITBC_COORDINATOR_URL``, else the coordinator of a running devnet's ``network.json``."""
    url = env_url("AITBC_COORDINATOR_URL", ("http", "https"))
    if url:
        return url.rstrip("/")
    try:
        network = json.loads((data_dir / "devnet" / "network.json").read_text(encoding="utf-8"))
        return network["coordinator"]["url"].rstrip("/")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def make_backend(options: dict) -> Backend:
    """The backend ``--backend`` names, configured from flags and the environment."""
    kind = options["backend"]
    if kind == "ollama":
        from provider.backends.ollama import OllamaBackend

        return OllamaBackend(options["backend_url"] or env_str("OLLAMA_HOST"), context_length=options["context_length"])
    if kind == "openai":
        from provider.backends.openai import OpenAIBackend

        api_key = env_raw("OPENAI_API_KEY")
        if options["api_key_file"]:
            api_key = Path(options["api_key_file"]).read_text(encoding="utf-8").strip()
        return OpenAIBackend(options["backend_url"] or env_str("OPENAI_BASE_URL"), api_key=api_key)
    from provider.backends.llamacpp import LlamaCppBackend

    model = options["model"] or DEFAULT_MODELS["llamacpp"]
    if "," in model:
        raise CommandError("the llamacpp backend runs one model")
    return LlamaCppBackend(
        model_path=options["gguf"], model_name=model, n_ctx=options["context_length"], n_threads=options["threads"]
    )


class Command(BaseCommand):
    help = "Provider daemon: sell inference from Ollama, an OpenAI-compatible server or an embedded model."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        # No abbreviations: "--password SECRET" must be an error, not a prefix of --password-file.
        serve = actions.add_parser(
            "serve", help="register offers and serve jobs until SIGINT/SIGTERM", allow_abbrev=False
        )
        serve.add_argument("--backend", choices=BACKENDS, default="ollama", help="inference backend (default ollama)")
        serve.add_argument(
            "--model",
            help="model(s) to offer, comma-separated (default: qwen3:8b for ollama, smollm2:135m for llamacpp, "
            "the server's first model for openai)",
        )
        serve.add_argument("--coordinator", help="coordinator base URL (default: AITBC_COORDINATOR_URL)")
        serve.add_argument("--host", default=settings.HOST, help="address of the /health server (default HOST)")
        serve.add_argument("--port", type=int, default=8008, help="port of the /health server (default 8008)")
        serve.add_argument("--public-url", help="URL registered with the coordinator (default http://HOST:PORT)")
        serve.add_argument("--name", help="provider name shown in the marketplace (default provider-<address>)")
        serve.add_argument("--key", type=Path, help="keystore of the provider's chain key (default: data dir's)")
        serve.add_argument("--password-file", type=Path, help="file holding the keystore's password")
        serve.add_argument("--input-price", type=non_negative, default=100, help="uait per 1,000 input tokens")
        serve.add_argument("--output-price", type=non_negative, default=200, help="uait per 1,000 output tokens")
        serve.add_argument("--concurrency", type=positive, help="jobs run at once; more are rejected")
        serve.add_argument("--context-length", type=positive, help="context offered (llamacpp: its n_ctx)")
        serve.add_argument("--transport", choices=("auto", "ws", "poll"), default="auto")
        serve.add_argument(
            "--ws-attempts", type=positive, default=3, help="failed websocket attempts before long polling (auto)"
        )
        serve.add_argument("--backend-url", help="Ollama host (default OLLAMA_HOST) or OpenAI base URL with /v1")
        serve.add_argument("--api-key-file", help="API key of the OpenAI-compatible server (or OPENAI_API_KEY)")
        serve.add_argument("--gguf", type=Path, help="llamacpp: a GGUF file instead of the shipped SmolLM2")
        serve.add_argument("--threads", type=positive, help="llamacpp: CPU threads (default: all cores)")
        serve.add_argument("--node-url", help="chain node to watch for payments (default AITBC_NODE_URL)")

    def handle(self, *args, **options) -> None:
        try:
            coordinator = (options["coordinator"] or "").rstrip("/") or default_coordinator_url(settings.DATA_DIR)
            node_url = options["node_url"] or env_url("AITBC_NODE_URL", ("http", "https"))
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if not coordinator:
            raise CommandError("no coordinator: give --coordinator URL or set AITBC_COORDINATOR_URL")
        if urlsplit(coordinator).scheme not in ("http", "https") or not urlsplit(coordinator).hostname:
            raise CommandError(f"the coordinator URL must be http(s)://host[:port], got {coordinator!r}")
        kind = options["backend"]
        options["context_length"] = options["context_length"] or DEFAULT_CONTEXT[kind]
        concurrency = options["concurrency"] or DEFAULT_CONCURRENCY[kind]

        backend = make_backend(options)
        models: list[str] = []
        try:
            if options["model"]:
                models = [m.strip() for m in options["model"].split(",") if m.strip()]
            elif kind in DEFAULT_MODELS:
                models = [DEFAULT_MODELS[kind]]
            else:
                available = backend.models()
                if not available:
                    raise CommandError(f"the OpenAI-compatible server at {backend.base_url} lists no models")
                models = available[:1]
            backend.check_models(models)
        except BackendError as exc:
            backend.close()
            missing = exc.missing if isinstance(exc, ModelNotFound) and kind == "ollama" else []
            hint = "".join(f" (try `ollama pull {name}`)" for name in missing)
            raise CommandError(f"{exc}{hint}") from exc

        # After the backend: a missing model is the likelier mistake, and says so without a key derivation.
        try:
            key = load_or_create_key(settings.DATA_DIR, options["key"], options["password_file"])
        except KeyLoadError as exc:
            backend.close()
            raise CommandError(str(exc)) from exc

        offers = [
            Offer(
                model=model,
                input_price=options["input_price"],
                output_price=options["output_price"],
                context_length=options["context_length"],
                concurrency=concurrency,
            )
            for model in models
        ]
        config = DaemonConfig(
            name=options["name"] or f"provider-{key.address[4:12]}",
            coordinator_url=coordinator,
            offers=offers,
            concurrency=concurrency,
            host=options["host"],
            port=options["port"],
            public_url=options["public_url"],
            transport=options["transport"],
            ws_attempts=options["ws_attempts"],
            node_url=node_url,
        )
        daemon = ProviderDaemon(config, backend, key)
        try:
            asyncio.run(daemon.run())
        except OSError as exc:
            raise CommandError(f"cannot serve on {options['host']}:{options['port']}: {exc}") from exc
        finally:
            backend.close()
