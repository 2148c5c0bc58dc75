"""Providers: registration, authentication, presence.

A provider proves it holds its key with a signed authentication it builds itself
(``chain.protocol.market``); the coordinator checks it is addressed to its own address
and refuses a nonce seen in the last two minutes. Presence is silence-based: any message,
heartbeat or poll marks a provider seen; one silent for ``conf.OFFLINE_AFTER_S`` (or whose
last websocket closed) goes offline and loses its jobs to the next provider.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from aitbc_site.errors import ApiError
from chain.protocol.encoding import MAX_INT, is_int
from chain.protocol.errors import ProtocolError
from chain.protocol.market import AUTH_MAX_SKEW_MS, verify_provider_auth
from marketplace import conf, kicks
from marketplace.keys import coordinator_address
from marketplace.models import AuthNonce, Job, Offer, Provider

MAX_OFFERS = 50
MODEL_NAME = re.compile(r"[\x21-\x7e]{1,200}")
# Nonces must be kept at least as long as an authentication stays acceptable (twice the skew).
NONCE_KEEP = timedelta(milliseconds=2 * AUTH_MAX_SKEW_MS)
# Presence writes are skipped when the last one is this recent (a chunk stream is many messages).
SEEN_RESOLUTION = timedelta(seconds=1)


def provider_group(address: str) -> str:
    """The channel-layer group of a provider's websockets and long polls."""
    return f"provider.{address}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AuthRefused(ApiError):
    status = 401
    code = "authentication_refused"


class NotRegistered(ApiError):
    status = 403
    code = "not_registered"


def authenticate(signed: Any, *, purpose: str) -> dict[str, Any]:
    """Check a provider authentication for ``purpose`` and spend its nonce; return its body."""
    try:
        body = verify_provider_auth(signed, coordinator=coordinator_address(), purpose=purpose)
    except ProtocolError as exc:
        raise AuthRefused(exc.message, code=exc.code) from None
    try:
        with transaction.atomic():
            AuthNonce.objects.create(nonce=body["nonce"], provider=body["provider"], seen_at=timezone.now())
    except IntegrityError:
        raise AuthRefused("this authentication was used already (replay)", code="replayed") from None
    return body


def purge_auth_nonces() -> int:
    return AuthNonce.objects.filter(seen_at__lt=timezone.now() - NONCE_KEEP).delete()[0]


@dataclass(frozen=True)
class OfferSpec:
    model: str
    input_price: int
    output_price: int
    context_length: int
    concurrency: int


def parse_offers(offers: Any) -> list[OfferSpec]:
    if not isinstance(offers, list) or len(offers) > MAX_OFFERS:
        raise ApiError(f"offers must be a list of at most {MAX_OFFERS} offers", code="malformed")
    fields = {"model", "input_price", "output_price", "context_length", "concurrency"}
    parsed: dict[str, OfferSpec] = {}
    for index, offer in enumerate(offers):
        if not isinstance(offer, dict) or set(offer) != fields:
            raise ApiError(
                f"offers[{index}] must have exactly the fields {', '.join(sorted(fields))}", code="malformed"
            )
        if type(offer["model"]) is not str or not MODEL_NAME.fullmatch(offer["model"]):
            raise ApiError(f"offers[{index}].model must be 1-200 printable ASCII characters", code="malformed")
        for name in ("input_price", "output_price", "context_length", "concurrency"):
            if not is_int(offer[name]):
                raise ApiError(f"offers[{index}].{name} must be an integer in [0, 2^53 - 1]", code="malformed")
        if offer["context_length"] < 1 or offer["concurrency"] < 1 or offer["concurrency"] > 1024:
            raise ApiError(f"offers[{index}]: context_length >= 1 and concurrency in [1, 1024]", code="malformed")
        if offer["model"] in parsed:
            raise ApiError(f"offers[{index}]: model {offer['model']!r} is offered twice", code="malformed")
        parsed[offer["model"]] = OfferSpec(**{name: offer[name] for name in fields})
    return list(parsed.values())


@dataclass(frozen=True)
class Registration:
    provider: Provider
    token: str


def provider_register(*, signed_auth: Any, name: str, url: str, offers: Any) -> Registration:
    """Register (or re-register) the provider that signed ``signed_auth``; its offers replace the old ones.

    The answer's token is shown once: only its SHA-256 is stored, and each registration
    replaces it.
    """
    specs = parse_offers(offers)
    body = authenticate(signed_auth, purpose="register")
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        provider, created = Provider.objects.get_or_create(
            address=body["provider"],
            defaults={
                "pubkey": body["pubkey"],
                "name": name,
                "url": url,
                "token_hash": hash_token(token),
                "first_registered_at": now,
                "registered_at": now,
            },
        )
        if not created:
            provider = Provider.objects.select_for_update().get(pk=provider.pk)
            provider.pubkey, provider.name, provider.url = body["pubkey"], name, url
            provider.token_hash, provider.registered_at = hash_token(token), now
            provider.save(update_fields=["pubkey", "name", "url", "token_hash", "registered_at"])
        for spec in specs:
            # Updated in place, never deleted: a job running on an offer keeps counting against it.
            Offer.objects.update_or_create(
                provider=provider,
                model=spec.model,
                defaults={
                    "input_price": spec.input_price,
                    "output_price": spec.output_price,
                    "context_length": spec.context_length,
                    "concurrency": spec.concurrency,
                    "withdrawn": False,
                },
            )
        Offer.objects.filter(provider=provider).exclude(model__in=[s.model for s in specs]).update(withdrawn=True)
        kicks.dispatch_pending()
    return Registration(provider=provider, token=token)


def provider_by_token(token: str) -> Provider | None:
    if not token or len(token) > 200:
        return None
    return Provider.objects.filter(token_hash=hash_token(token)).first()


def provider_connect(signed_auth: Any) -> Provider:
    """Check a websocket's hello (purpose ``connect``); the provider, who must be registered."""
    body = authenticate(signed_auth, purpose="connect")
    provider = Provider.objects.filter(pk=body["provider"]).first()
    if provider is None:
        raise NotRegistered(f"{body['provider']} is not registered: POST /v1/providers/register first")
    return provider


def provider_connected(*, address: str, active: int | None = None) -> None:
    """A websocket of this provider finished its hello."""
    Provider.objects.filter(pk=address).update(ws_connections=F("ws_connections") + 1)
    provider_seen(address=address, active=active, force=True)


def provider_seen(*, address: str, active: int | None = None, force: bool = False) -> None:
    """The provider spoke: it is online. Accumulates its uptime."""
    now = timezone.now()
    row = Provider.objects.filter(pk=address).values("online", "last_seen_at").first()
    if row is None:
        return
    was_online, last = row["online"], row["last_seen_at"]
    if not force and active is None and was_online and last is not None and now - last < SEEN_RESOLUTION:
        return
    up_ms = 0
    if was_online and last is not None and now - last <= timedelta(seconds=conf.OFFLINE_AFTER_S):
        up_ms = int((now - last).total_seconds() * 1000)
    fields: dict[str, Any] = {"online": True, "last_seen_at": now, "online_ms": F("online_ms") + up_ms}
    if active is not None and is_int(active) and active <= MAX_INT:
        fields["reported_active"] = min(active, 1_000_000)
    with transaction.atomic():
        Provider.objects.filter(pk=address).update(**fields)
        if not was_online:
            # Jobs may have been waiting for exactly this provider.
            kicks.dispatch_pending()


def provider_disconnected(*, address: str) -> None:
    """A websocket closed; when it was the provider's last, the provider is offline and loses its jobs."""
    Provider.objects.filter(pk=address, ws_connections__gt=0).update(ws_connections=F("ws_connections") - 1)
    if not Provider.objects.filter(pk=address, ws_connections=0).exists():
        return
    provider_offline(address=address, reason="its websocket closed")


def provider_offline(*, address: str, reason: str) -> int:
    """Mark the provider offline and fail over the jobs it holds; how many it lost."""
    from marketplace.services.dispatch import attempt_failed

    Provider.objects.filter(pk=address).update(online=False)
    lost = 0
    for job_id in Job.objects.filter(provider_id=address, state__in=Job.IN_FLIGHT).values_list("id", flat=True):
        if attempt_failed(job_id=job_id, provider=address, reason=f"provider offline: {reason}", counter="jobs_failed"):
            lost += 1
    return lost


def providers_mark_silent_offline() -> int:
    """Beat: providers silent past the limit go offline (their jobs fail over). Idempotent."""
    cutoff = timezone.now() - timedelta(seconds=conf.OFFLINE_AFTER_S)
    silent = set(Provider.objects.filter(online=True, last_seen_at__lt=cutoff).values_list("address", flat=True))
    # An offline provider still holding jobs (it went offline while one was being assigned) loses them too.
    silent |= set(
        Job.objects.filter(state__in=Job.IN_FLIGHT, provider__online=False).values_list("provider_id", flat=True)
    )
    for address in silent:
        provider_offline(address=address, reason=f"silent for more than {conf.OFFLINE_AFTER_S} s")
    return len(silent)
