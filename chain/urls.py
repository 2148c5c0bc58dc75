from django.urls import path, register_converter

from chain import api, explorer_api


class HeightConverter:
    regex = "[0-9]{1,16}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(HeightConverter, "height")

urlpatterns = [
    path("status", api.StatusView.as_view(), name="chain-status"),
    path("v1/chain/transactions", api.SubmitView.as_view(), name="chain-submit"),
    path("v1/chain/transactions/batch", api.BatchView.as_view(), name="chain-batch"),
    path("v1/chain/transactions/<str:tx_id>", api.TransactionView.as_view(), name="chain-transaction"),
    path("v1/chain/accounts/<str:address>", api.AccountView.as_view(), name="chain-account"),
    path("v1/chain/escrows/<str:escrow_id>", api.EscrowView.as_view(), name="chain-escrow"),
    path("v1/chain/blocks", api.BlocksView.as_view(), name="chain-blocks"),
    path("v1/chain/blocks/<height:height>", api.BlockView.as_view(), name="chain-block"),
    path("v1/chain/explorer/transactions", explorer_api.RecentTransactionsView.as_view(), name="chain-explorer-txs"),
    path(
        "v1/chain/explorer/accounts/<str:address>/transactions",
        explorer_api.AccountTransactionsView.as_view(),
        name="chain-explorer-account-txs",
    ),
    path("v1/chain/explorer/escrows", explorer_api.EscrowListView.as_view(), name="chain-explorer-escrows"),
    path("v1/chain/explorer/stats", explorer_api.StatsView.as_view(), name="chain-explorer-stats"),
    path("v1/chain/explorer/search", explorer_api.SearchView.as_view(), name="chain-explorer-search"),
    path("v1/test/partition", api.TestPartitionView.as_view(), name="chain-test-partition"),
]
