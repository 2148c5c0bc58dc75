"""Request rates per caller: one limiter for the faucet, the node's submissions, jobs and the gateway.

A rate ``N/period`` lets a caller make ``N`` requests at once and then one every
``period / N`` (the generic cell rate algorithm: a token bucket of ``N`` tokens refilled
evenly). Its state is one timestamp per caller in Django's cache, so checking costs a
read and a write, whatever the rate; the node's submission path runs it on every request.
With the default in-memory cache each process counts its own callers.

Going over answers ``429 rate_limited`` with ``Retry-After`` (whole seconds) and a
message naming the limit, before the view has done anything.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from aitbc_site.env import RATE_PATTERN
from aitbc_site.errors import ApiError

# Read through the module so tests can move time instead of waiting for it.
clock = time.time

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNITS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


@dataclass(frozen=True)
class Rate:
    count: int
    period: int  # seconds

    def __str__(self) -> str:
        return f"{self.count} per {_UNITS[self.period]}"


@functools.lru_cache(maxsize=64)
def parse_rate(value: str, *, setting: str) -> Rate:
    """``"600/min"`` -> ``Rate(600, 60)``; units s, min, hour, day. Bad values name ``setting``."""
    match = RATE_PATTERN.match(value.lower())
    if match is None:
        raise ImproperlyConfigured(f"{setting} must be a rate like 600/min (per s, min, hour or day), got {value!r}")
    return Rate(int(match.group(1)), _PERIODS[match.group(2)])


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


def take(*, scope: str, caller: str, rate: Rate, what: str) -> None:
    """Count one request of ``caller`` against ``rate``; ``RateLimited`` when it is over."""
    now = clock()
    interval = rate.period / rate.count
    key = f"aitbc-throttle:{scope}:{caller}"
    # The theoretical arrival time: when the bucket is full again.
    arrival = max(cache.get(key, now), now)
    allowed_from = arrival - rate.period + interval
    if now < allowed_from:
        wait = max(1, math.ceil(allowed_from - now))
        raise RateLimited(
            f"too many {what}: at most {rate}; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    cache.set(key, arrival + interval, timeout=math.ceil(arrival + interval - now) + 1)


def client_address(request) -> str:
    """The caller's IP address: ``REMOTE_ADDR``, or with ``AITBC_PROXY_COUNT`` proxies in front, the
    address the outermost of them saw (the others' ``X-Forwarded-For`` entries cannot be trusted)."""
    meta = request.META
    proxies = settings.PROXY_COUNT
    if proxies:
        forwarded = [entry.strip() for entry in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if entry.strip()]
        if forwarded:
            return forwarded[-min(proxies, len(forwarded))]
    return meta.get("REMOTE_ADDR", "") or "unknown"


class RateThrottle(BaseThrottle):
    """A DRF throttle over ``take``: subclasses name the scope, the rate's setting and what is counted.

    Callers are their user when logged in (``per_user``), else their address. Only the
    methods in ``methods`` count (all when empty).
    """

    scope = ""
    setting = ""
    what = "requests"
    per_user = False
    methods: frozenset[str] = frozenset()

    def rate(self) -> Rate:
        return parse_rate(getattr(settings, self.setting), setting=self.setting)

    def caller(self, request: Request) -> str:
        user = getattr(request, "user", None)
        if self.per_user and user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return f"addr:{client_address(request)}"

    def allow_request(self, request: Request, view) -> bool:
        if not self.methods or request.method in self.methods:
            take(scope=self.scope, caller=self.caller(request), rate=self.rate(), what=self.what)
        return True


class ChainSubmitThrottle(RateThrottle):
    """``POST /v1/chain/transactions`` and ``.../batch`` per client address: a batch is one request."""

    scope = "chain-submit"
    setting = "CHAIN_SUBMIT_RATE"
    what = "transaction submissions from one address"


class JobSubmitThrottle(RateThrottle):
    """``POST /v1/jobs`` per user, or per address for anonymous clients."""

    scope = "job-submit"
    setting = "MARKET_JOB_RATE"
    what = "job submissions"
    per_user = True
    methods = frozenset({"POST"})
