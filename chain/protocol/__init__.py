"""The AITBC wire protocol as pure code (no Django).

Canonical JSON and strict parsing, keys and addresses, signing under domain
tags, and transactions. The node, the wallet, the marketplace, the provider
daemon and the CLI all build on this package; another implementation can be
checked against ``shared/protocol/vectors.json`` through it.
"""
