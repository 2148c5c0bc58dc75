"""The explorer's pages (the node's RPC is ``chain/urls.py``)."""

from django.urls import path

from chain import views

urlpatterns = [
    path("explorer/", views.explorer, name="explorer"),
    path("explorer/blocks/<int:height>", views.block, name="explorer-block"),
    path("explorer/tx/<str:tx_id>", views.transaction, name="explorer-tx"),
    path("explorer/accounts/<str:address>", views.account, name="explorer-account"),
    path("explorer/escrows/<str:escrow_id>", views.escrow, name="explorer-escrow"),
]
