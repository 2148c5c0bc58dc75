"""The explorer's pages and the node's explorer reads, over the real RPC in-process."""

from __future__ import annotations

import pytest

from chain.tests.support import escrow_lock, transfer

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]
pytestmark = pytest.mark.django_db


def test_explorer_needs_a_login(client) -> None:
    answer = client.get("/explorer/")
    assert answer.status_code == 302
    assert answer["Location"].startswith("/accounts/login/?next=/explorer/")


def test_a_committed_transfer_shows_on_the_explorer_block_transaction_and_account_pages(browser, node) -> None:
    alice, bob = node.keys.funded[0], node.keys.funded[1]
    tx_id = node.submit(transfer(alice, 0, bob.address, 2_500_000))

    pending = browser.get("/explorer/?fragment=transactions").content.decode()
    assert tx_id in pending and "pending" in pending

    block = node.produce()
    page = browser.get("/explorer/").content.decode()
    assert f'href="/explorer/blocks/{block.height}"' in page
    assert tx_id in page

    block_page = browser.get(f"/explorer/blocks/{block.height}").content.decode()
    assert tx_id in block_page and alice.address in block_page and "applied" in block_page

    tx_page = browser.get(f"/explorer/tx/{tx_id}").content.decode()
    assert 'id="tx-status">committed' in tx_page
    assert f'href="/explorer/blocks/{block.height}"' in tx_page

    account = browser.get(f"/explorer/accounts/{bob.address}").content.decode()
    assert tx_id in account, "a received transfer is in the payee's history"
    sender = browser.get(f"/explorer/accounts/{alice.address}?fragment=account").content.decode()
    assert tx_id in sender


def test_an_escrow_page_shows_its_books_and_the_payer_lists_it(browser, node) -> None:
    alice = node.keys.funded[0]
    lock = escrow_lock(
        alice, 0, job_id="job-explorer-1", amount=50_000, arbiter=node.keys.arbiter.address, timeout_height=1_000
    )
    escrow_id = node.submit(lock)
    node.produce()
    page = browser.get(f"/explorer/escrows/{escrow_id}").content.decode()
    assert "job-explorer-1" in page and "50000 uait" in page and node.keys.arbiter.address in page
    listed = browser.get("/explorer/?fragment=escrows").content.decode()
    assert escrow_id in listed
    assert escrow_id in browser.get(f"/explorer/accounts/{alice.address}").content.decode()


def test_unknown_block_transaction_and_escrow_are_404(browser, node) -> None:
    assert browser.get("/explorer/blocks/999").status_code == 404
    assert browser.get("/explorer/tx/" + "ab" * 32).status_code == 404
    assert browser.get("/explorer/escrows/" + "cd" * 32).status_code == 404


@pytest.mark.parametrize("kind", ["height", "tx", "block_id", "address", "escrow_label"])
def test_the_search_box_finds_heights_transactions_blocks_addresses_and_escrow_labels(browser, node, kind) -> None:
    alice, bob = node.keys.funded[0], node.keys.funded[1]
    tx_id = node.submit(transfer(alice, 0, bob.address, 1_000_000))
    escrow_id = node.submit(
        escrow_lock(alice, 1, job_id="label-7", amount=10_000, arbiter=node.keys.arbiter.address, timeout_height=1_000)
    )
    block = node.produce()
    query, target = {
        "height": (str(block.height), f"/explorer/blocks/{block.height}"),
        "tx": (tx_id, f"/explorer/tx/{tx_id}"),
        "block_id": (block.id, f"/explorer/blocks/{block.height}"),
        "address": (bob.address, f"/explorer/accounts/{bob.address}"),
        "escrow_label": ("label-7", f"/explorer/escrows/{escrow_id}"),
    }[kind]
    answer = browser.get("/search", {"q": query})
    assert answer.status_code == 302
    assert answer["Location"] == target


def test_a_search_that_finds_nothing_says_so(browser, node) -> None:
    answer = browser.get("/search", {"q": "nothing-like-this"})
    assert answer.status_code == 404
    assert "Nothing found" in answer.content.decode()


def test_pages_say_when_the_node_is_unreachable(browser, no_node) -> None:
    for path in ("/explorer/", "/explorer/blocks/1", "/"):
        answer = browser.get(path)
        assert answer.status_code == 200, path
        assert "cannot be reached" in answer.content.decode(), path


def test_explorer_stats_count_blocks_and_transactions_per_bucket(client, node) -> None:
    alice, bob = node.keys.funded[0], node.keys.funded[1]
    node.submit(transfer(alice, 0, bob.address, 1))
    node.produce()
    node.produce()
    stats = client.get("/v1/chain/explorer/stats", {"window": 600, "bucket": 60}).json()
    assert len(stats["buckets"]) == 10
    assert stats["blocks"] == 2 and stats["txs"] == 1
    assert sum(b["txs"] for b in stats["buckets"]) == 1
    assert client.get("/v1/chain/explorer/stats", {"window": 5}).json()["error"]["code"] == "malformed"


def test_explorer_reads_refuse_bad_input(client, node) -> None:
    assert client.get("/v1/chain/explorer/accounts/nope/transactions").json()["error"]["code"] == "invalid_address"
    assert client.get("/v1/chain/explorer/transactions", {"limit": 0}).status_code == 400
    assert client.get("/v1/chain/explorer/search", {"q": "zzz"}).status_code == 404
