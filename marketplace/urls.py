from django.urls import include, path

from marketplace import api

urlpatterns = [
    path("v1/coordinator", api.CoordinatorView.as_view(), name="market-coordinator"),
    path("v1/providers", api.ProviderListView.as_view(), name="market-providers"),
    path("v1/providers/register", api.ProviderRegisterView.as_view(), name="market-provider-register"),
    path("v1/providers/poll", api.ProviderPollView.as_view(), name="market-provider-poll"),
    path("v1/providers/heartbeat", api.ProviderHeartbeatView.as_view(), name="market-provider-heartbeat"),
    path("v1/providers/jobs/<str:job_id>/events", api.ProviderJobEventsView.as_view(), name="market-provider-events"),
    path("v1/offers", api.OfferListView.as_view(), name="market-offers"),
    path("v1/jobs", api.JobListCreateView.as_view(), name="market-jobs"),
    path("v1/jobs/<str:job_id>", api.JobDetailView.as_view(), name="market-job"),
    path("v1/jobs/<str:job_id>/cancel", api.JobCancelView.as_view(), name="market-job-cancel"),
    path("v1/jobs/<str:job_id>/receipt", api.JobReceiptView.as_view(), name="market-job-receipt"),
    path("v1/jobs/<str:job_id>/reject", api.JobRejectView.as_view(), name="market-job-reject"),
    path("v1/deposits", api.DepositListCreateView.as_view(), name="market-deposits"),
    path("v1/deposits/<str:deposit_id>", api.DepositDetailView.as_view(), name="market-deposit"),
    path("v1/deposits/<str:deposit_id>/close", api.DepositCloseView.as_view(), name="market-deposit-close"),
    # The drop-in gateway: Ollama's and OpenAI's APIs, and its API keys (docs/gateway.md).
    path("", include("marketplace.gateway.urls")),
]
