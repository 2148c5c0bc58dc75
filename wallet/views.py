"""The wallet's pages: create or import a wallet, balance, send with the password, history, faucet.

Forms post to these views (CSRF-protected) and they call the same services as the REST
API; errors come back as messages on the page. History and balance are read from the
node and refreshed live on each block.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from aitbc_site.pages import Fragment, render_page
from chain.client import ChainUnavailable
from chain.protocol.errors import ProtocolError
from wallet import faucet, selectors, services
from wallet.errors import WalletError, WalletNotFound

logger = logging.getLogger(__name__)
UAIT_PER_AIT = 1_000_000
NODE_DOWN = "the chain node cannot be reached right now"


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ChainUnavailable):
        logger.warning("wallet page: %s", exc)
        return NODE_DOWN
    message = getattr(exc, "message", str(exc))
    code = getattr(exc, "code", "")
    return f"{message} ({code})" if code else message


def _balances(user) -> dict[str, Any]:
    from chain import dashboard

    wallets = []
    node_error = None
    for wallet in selectors.wallet_list(owner=user):
        row = {"name": wallet.name, "address": wallet.address, "balance": None}
        if node_error is None:
            try:
                row["balance"] = dashboard.call(lambda c, a=wallet.address: c.account(a))["balance"]
            except dashboard.NodeUnavailable:
                node_error = NODE_DOWN
        wallets.append(row)
    return {"wallets": wallets, "node_error": node_error}


@login_required
def wallet_index(request: HttpRequest) -> HttpResponse:
    return render_page(
        request,
        "wallet/index.html",
        {"wallets": Fragment("wallet/_wallets.html", lambda: _balances(request.user))},
        {"nav": "wallet", "faucet": faucet.faucet_config() is not None},
    )


@login_required
@require_POST
@sensitive_post_parameters("password", "password2")
def wallet_create(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    password = request.POST.get("password", "")
    if password != request.POST.get("password2", ""):
        messages.error(request, "The two passwords differ.")
        return redirect("wallet-page")
    try:
        created = services.wallet_create(owner=request.user, name=name, password=password)
    except (WalletError, ProtocolError) as exc:
        messages.error(request, f"Could not create the wallet: {_error_text(exc)}")
        return redirect("wallet-page")
    # The mnemonic is shown this once and never stored, so it is rendered here, not redirected to.
    return render(
        request, "wallet/created.html", {"wallet": created.wallet, "mnemonic": created.mnemonic, "nav": "wallet"}
    )


@login_required
@require_POST
@sensitive_post_parameters("password", "mnemonic", "passphrase")
def wallet_import(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    password = request.POST.get("password", "")
    mnemonic = request.POST.get("mnemonic", "").strip()
    upload = request.FILES.get("keystore")
    try:
        if upload is not None:
            if upload.size > 64 * 1024:
                raise WalletError("a keystore file is a few hundred bytes; that file is too large")
            keystore = json.loads(upload.read().decode("utf-8"))
            wallet = services.wallet_import_keystore(
                owner=request.user, name=name, keystore=keystore, password=password
            )
        elif mnemonic:
            wallet = services.wallet_import_mnemonic(
                owner=request.user,
                name=name,
                mnemonic=mnemonic,
                password=password,
                passphrase=request.POST.get("passphrase", ""),
            )
        else:
            raise WalletError("give a mnemonic or a keystore file")
    except (WalletError, ProtocolError, ValueError) as exc:
        messages.error(request, f"Could not import the wallet: {_error_text(exc)}")
        return redirect("wallet-page")
    messages.success(request, f"Imported wallet {wallet.name} ({wallet.address}).")
    return redirect("wallet-detail-page", address=wallet.address)


def _wallet_or_404(request: HttpRequest, address: str):
    try:
        return selectors.wallet_get(owner=request.user, address=address)
    except WalletNotFound:
        raise Http404("no such wallet among yours") from None


def _wallet_state(address: str) -> dict[str, Any]:
    from chain import dashboard
    from chain.views import node_read

    return node_read(
        lambda: {
            "account": dashboard.call(lambda c: c.account(address)),
            "history": dashboard.call(lambda c: c.account_transactions(address, 50)),
        },
        account=None,
        history=[],
    )


@login_required
def wallet_detail(request: HttpRequest, address: str) -> HttpResponse:
    wallet = _wallet_or_404(request, address)
    return render_page(
        request,
        "wallet/detail.html",
        {"state": Fragment("wallet/_state.html", lambda: _wallet_state(wallet.address))},
        {
            "nav": "wallet",
            "wallet": wallet,
            "faucet": faucet.faucet_config() is not None,
            "sent": request.GET.get("sent"),
        },
    )


def parse_ait(value: str) -> int:
    """``"1.5"`` AIT as 1,500,000 uait; at most six decimals, more than zero."""
    try:
        amount = Decimal(value.strip().replace(",", ""))
    except InvalidOperation:
        raise ProtocolError("malformed", f"amount {value!r} is not a number of AIT") from None
    uait = amount * UAIT_PER_AIT
    if uait != uait.to_integral_value() or uait <= 0:
        raise ProtocolError("malformed", "the amount must be more than 0 AIT, with at most six decimals")
    return int(uait)


@login_required
@require_POST
@sensitive_post_parameters("password")
def wallet_send(request: HttpRequest, address: str) -> HttpResponse:
    wallet = _wallet_or_404(request, address)
    to = request.POST.get("to", "").strip()
    try:
        amount = parse_ait(request.POST.get("amount", ""))
        sent = services.wallet_send(
            wallet=wallet,
            password=request.POST.get("password", ""),
            to=to,
            amount=amount,
            memo=request.POST.get("memo", ""),
        )
    except (WalletError, ProtocolError, ChainUnavailable) as exc:
        messages.error(request, f"Nothing was sent: {_error_text(exc)}")
        return redirect("wallet-detail-page", address=address)
    messages.success(request, f"Sent {amount} uait to {to}: transaction {sent.id}, waiting for its block.")
    return redirect(reverse("wallet-detail-page", args=[address]) + f"?sent={sent.id}")


@login_required
@require_POST
def wallet_faucet(request: HttpRequest, address: str) -> HttpResponse:
    wallet = _wallet_or_404(request, address)
    try:
        grant = faucet.faucet_send(user_id=request.user.pk, to=wallet.address)
    except (WalletError, ProtocolError, ChainUnavailable) as exc:
        messages.error(request, f"The faucet sent nothing: {_error_text(exc)}")
        return redirect("wallet-detail-page", address=address)
    messages.success(request, f"The faucet sent {grant.amount} uait: transaction {grant.id}.")
    return redirect(reverse("wallet-detail-page", args=[address]) + f"?sent={grant.id}")
