"""A read-only chain explorer in the Django admin.

The ledger changes only through transactions and blocks, so nothing here can
add, change or delete a row.
"""

from __future__ import annotations

from django.contrib import admin

from chain.models import Account, Block, ChainState, Escrow, Evidence, Transaction, Validator


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ChainState)
class ChainStateAdmin(ReadOnlyAdmin):
    list_display = ("chain_id", "height", "latest_block_id", "latest_block_time", "total_supply")


@admin.register(Validator)
class ValidatorAdmin(ReadOnlyAdmin):
    list_display = ("address", "power", "effective_height", "reason")
    search_fields = ("=address", "=pubkey")
    ordering = ("-effective_height", "address")


@admin.register(Block)
class BlockAdmin(ReadOnlyAdmin):
    list_display = ("height", "id", "time", "proposer", "tx_count")
    search_fields = ("id", "height", "proposer")
    ordering = ("-height",)
    show_full_result_count = False


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdmin):
    list_display = ("id", "status", "type", "sender", "nonce", "fee", "height", "error_code", "received_at")
    list_filter = ("status", "type")
    search_fields = ("=id", "=sender", "=escrow")
    ordering = ("-seq",)
    show_full_result_count = False


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ("address", "balance", "nonce")
    search_fields = ("=address",)
    ordering = ("-balance",)
    show_full_result_count = False


@admin.register(Escrow)
class EscrowAdmin(ReadOnlyAdmin):
    list_display = ("id", "job_id", "payer", "arbiter", "amount", "paid", "refunded", "status", "timeout_height")
    list_filter = ("status",)
    search_fields = ("=id", "=job_id", "=payer", "=arbiter")
    ordering = ("-opened_height",)


@admin.register(Evidence)
class EvidenceAdmin(ReadOnlyAdmin):
    list_display = ("validator", "height", "included_height", "received_at")
    search_fields = ("=validator",)
