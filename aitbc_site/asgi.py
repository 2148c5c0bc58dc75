"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aitbc_site.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

from aitbc_site.direct import DirectASGIHandler, DirectRouter  # noqa: E402
from aitbc_site.routing import (  # noqa: E402
    node_websocket_urlpatterns,
    provider_websocket_urlpatterns,
    websocket_urlpatterns,
)

application = ProtocolTypeRouter(
    {
        # The dashboard's and the API docs' assets are served by this process (from the apps'
        # static folders, no collectstatic or CDN needed); a proxy in front may serve STATIC_ROOT.
        # The gateway's inference endpoints skip the session, CSRF and auth middleware
        # (aitbc_site.direct); everything else goes through all of it.
        "http": DirectRouter(ASGIStaticFilesHandler(django_asgi_app), DirectASGIHandler()),
        "websocket": URLRouter(
            [
                # Providers are programs, not browsers: no Origin to check and no session to
                # protect; they prove who they are with a signed hello.
                *provider_websocket_urlpatterns,
                *node_websocket_urlpatterns,
                re_path(r"", AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
            ]
        ),
    }
)
