"""Wallets the web service keeps for its users.

The key never rests in clear: ``keystore`` is the same encrypted keystore as a
CLI wallet file (``protocol.md``), and signing needs the wallet's password.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Wallet(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="wallets")
    name = models.CharField(max_length=64)
    address = models.CharField(max_length=64)
    pubkey = models.CharField(max_length=64)
    keystore = models.JSONField(help_text="encrypted keystore (protocol.md format)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="wallet_unique_owner_name"),
            # The API addresses a user's wallet by its address, so it must be unique per user.
            models.UniqueConstraint(fields=["owner", "address"], name="wallet_unique_owner_address"),
        ]
        indexes = [models.Index(fields=["address"], name="wallet_address")]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"
