"""Small pieces of state that every process of one deployment must share.

With ``REDIS_URL`` they live in Redis (under the channel layer's prefix), so web,
worker and beat processes on any host see the same values; in embedded mode there is
one process and they live in memory. Used for metrics counters that workers increment
and the web process reports, and for the last chain height the head watcher announced.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from django.conf import settings

_lock = threading.Lock()
_local_counters: dict[str, float] = defaultdict(float)
_local_values: dict[str, int] = {}
_client = None

# Sets KEYS[1] to ARGV[1] when it is unset or lower; answers the previous value (or -1).
_RAISE_SCRIPT = """
local previous = tonumber(redis.call('GET', KEYS[1]) or '-1')
if previous < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return previous
"""


def prefix() -> str:
    config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    return f"{config.get('prefix', 'aitbc')}:state"


def redis_client():
    """One Redis client per process (None in embedded mode)."""
    global _client
    if settings.REDIS_URL is None:
        return None
    if _client is None:
        import redis

        with _lock:
            if _client is None:
                _client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2, **settings.REDIS_CLIENT_OPTIONS
                )
    return _client


def counter_add(field: str, amount: float = 1.0) -> None:
    client = redis_client()
    if client is None:
        with _lock:
            _local_counters[field] += amount
        return
    client.hincrbyfloat(f"{prefix()}:counters", field, amount)


def counters() -> dict[str, float]:
    client = redis_client()
    if client is None:
        with _lock:
            return dict(_local_counters)
    raw = client.hgetall(f"{prefix()}:counters")
    return {key.decode(): float(value) for key, value in raw.items()}


def raise_value(name: str, value: int) -> int:
    """Set ``name`` to ``value`` if that raises it; the previous value (-1 if unset).

    Atomic across processes: of several callers raising to the same value, exactly one
    sees a previous value below it.
    """
    client = redis_client()
    if client is None:
        with _lock:
            previous = _local_values.get(name, -1)
            if previous < value:
                _local_values[name] = value
            return previous
    return int(client.eval(_RAISE_SCRIPT, 1, f"{prefix()}:{name}", value))


def reset_local() -> None:
    """Forget the in-memory values (tests)."""
    with _lock:
        _local_counters.clear()
        _local_values.clear()
