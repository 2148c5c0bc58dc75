from django.urls import path

from aitbc_site.consumers import EventsConsumer
from chain.consumers import P2PConsumer
from marketplace.consumers import ProviderConsumer

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi()),
]

# Routed outside the origin check (see asgi.py): providers authenticate by signature.
provider_websocket_urlpatterns = [
    path("ws/provider/", ProviderConsumer.as_asgi()),
]

# Other nodes: gossip carries its own signatures, so no Origin or session applies either.
node_websocket_urlpatterns = [
    path("p2p/", P2PConsumer.as_asgi()),
]
