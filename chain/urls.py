from django.urls import path, register_converter

from chain import api


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
    path("v1/test/partition", api.TestPartitionView.as_view(), name="chain-test-partition"),
]
