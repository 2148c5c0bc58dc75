"""The gateway's routes: Ollama's API at the root and under ``/k/<key>/``, OpenAI's under ``/v1``, keys."""

from django.urls import path

from aitbc_site import logredact
from marketplace.gateway import api, dashboard, ollama, openai

# A key in the path is redacted from every log (``aitbc_site.logredact``).
KEY = "k/<str:key>/"

_OLLAMA = [
    ("api/chat", ollama.chat, "chat"),
    ("api/generate", ollama.generate, "generate"),
    ("api/tags", ollama.tags, "tags"),
    ("api/show", ollama.show, "show"),
    ("api/version", ollama.version, "version"),
]

urlpatterns = [
    *(path(route, view, name=f"gateway-ollama-{name}") for route, view, name in _OLLAMA),
    *(path(KEY + route, view, name=f"gateway-ollama-key-{name}") for route, view, name in _OLLAMA),
    path(KEY, ollama.root, name="gateway-ollama-key-root"),
    path("v1/chat/completions", openai.chat_completions, name="gateway-openai-chat"),
    path("v1/models", openai.models, name="gateway-openai-models"),
    path("v1/models/<str:model_id>", openai.model, name="gateway-openai-model"),
    path("v1/keys", api.KeysView.as_view(), name="gateway-keys"),
    path("market/keys/", dashboard.keys_page, name="gateway-keys-page"),
    path("v1/keys/<int:key_id>/revoke", api.KeyRevokeView.as_view(), name="gateway-key-revoke"),
]

# Django logs the path of every 4xx/5xx answer ("Unauthorized: /k/<key>/api/chat"): redact keys from all logs.
logredact.install()
