"""The coordinator's records in the admin: read-only views for operators (writes go through services)."""

from __future__ import annotations

from django.contrib import admin

from marketplace.models import Deposit, DepositPayout, Job, JobAttempt, JobEvent, Offer, OutboxTx, Provider


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class OfferInline(admin.TabularInline):
    model = Offer
    extra = 0
    can_delete = False
    fields = ["model", "input_price", "output_price", "context_length", "concurrency", "active", "withdrawn"]
    readonly_fields = fields


@admin.register(Provider)
class ProviderAdmin(ReadOnlyAdmin):
    list_display = ["address", "name", "online", "last_seen_at", "jobs_completed", "jobs_failed", "jobs_disputed"]
    list_filter = ["online"]
    search_fields = ["address", "name"]
    exclude = ["token_hash"]
    inlines = [OfferInline]


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = ["at", "state", "reason", "provider"]
    readonly_fields = fields


class JobAttemptInline(admin.TabularInline):
    model = JobAttempt
    extra = 0
    can_delete = False
    fields = ["number", "provider", "state", "reason", "assigned_at", "ended_at"]
    readonly_fields = fields


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ["id", "state", "model", "payment", "provider", "max_price", "charge", "created_at"]
    list_filter = ["state", "payment", "model"]
    search_fields = ["id", "payer", "escrow_id", "provider__address"]
    exclude = ["token_hash"]
    inlines = [JobAttemptInline, JobEventInline]


@admin.register(Deposit)
class DepositAdmin(ReadOnlyAdmin):
    list_display = ["id", "owner", "state", "amount", "reserved", "charged", "paid", "refunded", "timeout_height"]
    list_filter = ["state"]
    search_fields = ["id", "payer", "escrow_id"]


@admin.register(DepositPayout)
class DepositPayoutAdmin(ReadOnlyAdmin):
    list_display = ["id", "deposit", "provider", "amount", "jobs", "state", "created_at"]
    list_filter = ["state"]


@admin.register(OutboxTx)
class OutboxTxAdmin(ReadOnlyAdmin):
    list_display = ["id", "purpose", "status", "sender", "nonce", "tx_id", "height", "error_code", "created_at"]
    list_filter = ["status", "purpose", "own"]
    search_fields = ["tx_id", "sender", "job__id", "deposit__id"]
