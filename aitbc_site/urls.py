from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from aitbc_site.health import health
from aitbc_site.views import system_ping

urlpatterns = [
    path("health", health, name="health"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[]), name="api-docs"),
    path("v1/system/ping", system_ping, name="system-ping"),
    path("", include("automation.urls")),
    path("", include("chain.urls")),
    path("", include("wallet.urls")),
    path("", include("marketplace.urls")),
]
