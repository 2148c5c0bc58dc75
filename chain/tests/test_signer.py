"""The validator's guarded key (``DbSigner``): one conditional write per signature, carrying the lock."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chain.models import SignerState
from chain.network import DbSigner, load_lock
from chain.tests.support import CHAIN_ID, named_key

KEY = named_key("signer-validator")
BLOCK = "ab" * 32
OTHER = "cd" * 32

pytestmark = pytest.mark.django_db


def test_the_signer_writes_once_per_signature_and_never_signs_below_its_record() -> None:
    signer = DbSigner(KEY)
    first = signer.sign_vote(CHAIN_ID, 5, 0, "prevote", BLOCK)
    with CaptureQueriesContext(connection) as queries:
        second = signer.sign_vote(CHAIN_ID, 5, 0, "precommit", BLOCK)
    assert first and second
    assert len(queries) == 1 and queries[0]["sql"].lstrip().upper().startswith("UPDATE")
    with CaptureQueriesContext(connection) as queries:
        assert signer.sign_vote(CHAIN_ID, 5, 0, "precommit", BLOCK) == second, "the same vote again"
    assert len(queries) == 0, "a signature given already is answered from memory"
    assert signer.sign_vote(CHAIN_ID, 5, 0, "precommit", OTHER) is None, "another block at a signed step"
    assert signer.sign_vote(CHAIN_ID, 5, 0, "prevote", OTHER) is None, "an earlier step"
    # A restart reads the record: the same answers.
    again = DbSigner(KEY)
    assert again.sign_vote(CHAIN_ID, 5, 0, "precommit", OTHER) is None
    assert again.sign_vote(CHAIN_ID, 5, 0, "precommit", BLOCK) == second
    assert again.sign_proposal(CHAIN_ID, 5, 0, None, BLOCK) is None, "a proposal is an earlier step"


def test_a_record_moved_on_by_another_process_wins_over_what_the_signer_believes() -> None:
    signer = DbSigner(KEY)
    assert signer.sign_vote(CHAIN_ID, 5, 0, "prevote", BLOCK)
    SignerState.objects.filter(singleton=1).update(height=9)
    assert signer.sign_vote(CHAIN_ID, 6, 0, "prevote", BLOCK) is None
    assert SignerState.objects.get(singleton=1).height == 9
    # Having seen the conflict it reads the record again, and signs past it.
    assert signer.sign_vote(CHAIN_ID, 9, 0, "prevote", OTHER) is None, "another block at the recorded step"
    assert signer.sign_vote(CHAIN_ID, 10, 0, "prevote", BLOCK)
    assert SignerState.objects.get(singleton=1).height == 10


def test_a_precommit_for_a_block_writes_the_lock_with_it_and_a_later_height_drops_it() -> None:
    signer = DbSigner(KEY)
    signer.sign_vote(CHAIN_ID, 3, 0, "prevote", BLOCK)
    assert load_lock(3) is None
    signer.sign_vote(CHAIN_ID, 3, 0, "precommit", BLOCK)
    assert load_lock(3) == (0, BLOCK, None)
    assert signer.lock_written == (3, 0, BLOCK)
    # A restart mid-height: later rounds of the height keep the lock, nil votes included.
    restarted = DbSigner(KEY)
    restarted.sign_vote(CHAIN_ID, 3, 1, "prevote", "")
    restarted.sign_vote(CHAIN_ID, 3, 1, "precommit", "")
    assert load_lock(3) == (0, BLOCK, None)
    # A precommit for another block in a later round moves the lock.
    restarted.sign_vote(CHAIN_ID, 3, 2, "precommit", OTHER)
    assert load_lock(3) == (2, OTHER, None)
    restarted.sign_vote(CHAIN_ID, 4, 0, "prevote", "")
    assert SignerState.objects.get(singleton=1).locked is None
    assert load_lock(4) is None


def test_a_lock_left_by_an_earlier_run_is_dropped_by_the_next_heights_first_signature() -> None:
    DbSigner(KEY).sign_vote(CHAIN_ID, 7, 0, "precommit", BLOCK)
    restarted = DbSigner(KEY)
    restarted.sign_vote(CHAIN_ID, 8, 0, "prevote", OTHER)
    assert SignerState.objects.get(singleton=1).locked is None
