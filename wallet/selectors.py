"""Reads of the web service's wallets. Every read is scoped to its owner."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from chain.client import ChainClient
from wallet import chain
from wallet.errors import WalletNotFound
from wallet.models import Wallet


def wallet_list(*, owner: AbstractBaseUser) -> QuerySet[Wallet]:
    return Wallet.objects.filter(owner=owner).order_by("created_at", "id")


def wallet_get(*, owner: AbstractBaseUser, address: str) -> Wallet:
    """``owner``'s wallet holding ``address``; someone else's is not found, like a missing one."""
    try:
        return Wallet.objects.get(owner=owner, address=address)
    except Wallet.DoesNotExist:
        raise WalletNotFound(f"no wallet {address}") from None


def wallet_account(*, address: str, client: ChainClient | None = None) -> dict[str, Any]:
    """``{"address", "balance", "nonce"}`` from the node."""
    return (client or chain.get_chain_client()).account(address)
