"""The gateway's records: API keys bound to a deposit, and which key each gateway job drew on.

Registered with the marketplace app (``marketplace.models`` imports this module). Lock
order, after ``marketplace.models``' own: an ApiKey row is locked before its Deposit (only
gateway submissions under a spending cap lock it).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from marketplace.models import Deposit, Job


class ApiKey(models.Model):
    """A secret a client sends as ``Authorization: Bearer <key>`` (or in ``/k/<key>/``): shown once, stored hashed."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    deposit = models.ForeignKey(Deposit, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, help_text="the key's first characters, to recognise it")
    key_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the key, hex")
    spending_cap = models.BigIntegerField(
        null=True, blank=True, help_text="uait this key may spend in all (charges plus reservations); none: no cap"
    )
    allowed_models = models.JSONField(default=list, blank=True, help_text="models this key may use; empty: any")
    rate_limit = models.IntegerField(null=True, blank=True, help_text="requests per minute; none: the default")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["owner", "revoked_at"], name="apikey_owner")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(spending_cap__isnull=True) | models.Q(spending_cap__gte=0),
                name="apikey_cap_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}…" + (f" ({self.name})" if self.name else "")

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows_model(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


class GatewayJob(models.Model):
    """A job submitted through the gateway, and the key that paid for it."""

    OLLAMA, OPENAI = "ollama", "openai"
    APIS = [(a, a) for a in (OLLAMA, OPENAI)]

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="gateway")
    key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="jobs")
    api = models.CharField(max_length=10, choices=APIS)
    created_at = models.DateTimeField(auto_now_add=True)
