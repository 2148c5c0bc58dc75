"""The drop-in gateway: Ollama- and OpenAI-compatible endpoints on the coordinator (docs/gateway.md).

Every request is a marketplace job paid from the deposit its API key is bound to:
``keys`` (API keys, their limits and authentication), ``streaming`` (one request's job,
from submission to the provider's streamed tokens and the metered charge), ``ollama`` and
``openai`` (each API's shapes and errors), ``api`` (managing keys over REST).
"""
