"""The dashboard's page of gateway API keys (``/market/keys/``): create, list, revoke.

A plain form page (session and CSRF): creating shows the new key once, with the two
lines that point an Ollama or OpenAI client at this coordinator.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from aitbc_site.errors import ApiError
from marketplace.gateway import keys, services
from marketplace.models import Deposit


def _optional_int(raw: str, what: str) -> int | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ApiError(f"{what} must be a whole number", code="malformed")
    return int(raw)


def _context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    rows = []
    for key in keys.apikey_list(owner=request.user)[:100]:
        key.spent = services.key_spending(key)
        rows.append(key)
    deposits = Deposit.objects.filter(owner=request.user, state=Deposit.OPEN).order_by("-created_at")
    base = request.build_absolute_uri("/").rstrip("/")
    return {"nav": "market", "keys": rows, "deposits": deposits, "base_url": base} | extra


@login_required
def keys_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            if request.POST.get("action") == "revoke":
                keys.apikey_revoke(key_id=int(request.POST.get("key") or 0), owner=request.user)
                return redirect("gateway-keys-page")
            created = keys.apikey_create(
                owner=request.user,
                deposit_id=request.POST.get("deposit") or None,
                name=request.POST.get("name", ""),
                spending_cap=_optional_int(request.POST.get("spending_cap", ""), "the spending cap"),
                allowed_models=[m.strip() for m in request.POST.get("models", "").split(",") if m.strip()],
                rate_limit=_optional_int(request.POST.get("rate_limit", ""), "the rate limit"),
            )
        except (ApiError, ValueError) as exc:
            message = exc.message if isinstance(exc, ApiError) else "no such key"
            return render(request, "marketplace/api_keys.html", _context(request, error=message), status=400)
        return render(request, "marketplace/api_keys.html", _context(request, created=created))
    return render(request, "marketplace/api_keys.html", _context(request))
