from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from aitbc_site import views
from aitbc_site.health import health
from aitbc_site.metrics import metrics

urlpatterns = [
    path("health", health, name="health"),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[]), name="api-docs"),
    path("v1/system/ping", views.system_ping, name="system-ping"),
    # The dashboard: the site's overview and search, then each app's pages.
    path("", views.overview, name="overview"),
    path("search", views.search, name="explorer-search"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("chain.dashboard_urls")),
    path("", include("wallet.dashboard_urls")),
    path("", include("marketplace.dashboard_urls")),
    path("", include("automation.dashboard_urls")),
    # The REST API and the node's RPC.
    path("", include("automation.urls")),
    path("", include("chain.urls")),
    path("", include("wallet.urls")),
    path("", include("marketplace.urls")),
]

handler400 = "aitbc_site.views.bad_request"
handler404 = "aitbc_site.views.not_found"
handler500 = "aitbc_site.views.server_error"
