from django.urls import path

from wallet import api, faucet_api

urlpatterns = [
    path("v1/faucet", faucet_api.FaucetView.as_view(), name="faucet"),
    path("v1/wallets", api.WalletListCreateView.as_view(), name="wallets"),
    # Before the address route: "import" is never an address.
    path("v1/wallets/import", api.WalletImportView.as_view(), name="wallets-import"),
    path("v1/wallets/<str:address>", api.WalletDetailView.as_view(), name="wallet-detail"),
    path("v1/wallets/<str:address>/send", api.WalletSendView.as_view(), name="wallet-send"),
]
