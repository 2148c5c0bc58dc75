from django.contrib import admin

from wallet.models import Wallet


@admin.register(Wallet)
class WalletAdmin(admin.ModelAdmin):
    list_display = ["name", "address", "owner", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["name", "address", "owner__username"]
    # The keystore is encrypted, but an edited one would lose the key: read-only.
    readonly_fields = ["owner", "name", "address", "pubkey", "keystore", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False
