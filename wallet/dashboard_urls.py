"""The wallet's pages (its REST API is ``wallet/urls.py``)."""

from django.urls import path

from wallet import views

urlpatterns = [
    path("wallet/", views.wallet_index, name="wallet-page"),
    path("wallet/create", views.wallet_create, name="wallet-create-page"),
    path("wallet/import", views.wallet_import, name="wallet-import-page"),
    path("wallet/<str:address>", views.wallet_detail, name="wallet-detail-page"),
    path("wallet/<str:address>/send", views.wallet_send, name="wallet-send-page"),
    path("wallet/<str:address>/faucet", views.wallet_faucet, name="wallet-faucet-page"),
]
