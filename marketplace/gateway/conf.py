"""The gateway's tunables, read once from the environment (read as ``conf.NAME`` so tests can change them)."""

from __future__ import annotations

from aitbc_site.env import env_bool, env_int, env_str

# Requests per minute a key may make when it has no rate of its own.
RATE_PER_MIN = env_int("AITBC_GATEWAY_RATE_PER_MIN", 600, minimum=1)
# Output tokens of a request that sets no limit (Ollama's num_predict -1, OpenAI without max_tokens).
DEFAULT_MAX_TOKENS = env_int("AITBC_GATEWAY_DEFAULT_MAX_TOKENS", 512, minimum=1)
# A stream with no message this long reads its job from the database (a lost message cannot stall it).
RECHECK_S = 1.0
# What GET /api/version says: Ollama clients compare it against the features they need.
OLLAMA_VERSION = env_str("AITBC_GATEWAY_OLLAMA_VERSION", "0.12.0") or "0.12.0"
# A key's last use is recorded at most this often (a write per request would cost every request).
LAST_USED_RESOLUTION_S = 60
# Log every request's timings at INFO (else DEBUG): where the time of a request went.
TRACE = env_bool("AITBC_GATEWAY_TRACE", False)
