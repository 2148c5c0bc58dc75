"""Property-based fuzzing of every decoder of outside input: only the documented errors come out.

Transactions, commits, consensus messages, receipts, provider authentications and
keystores are fed random JSON, random bytes and mutations of valid objects (a field
dropped, added or replaced by a value of another type, huge integers, deep nesting,
non-UTF-8, duplicate keys). Each decoder must accept or refuse with its documented error
(``ProtocolError`` with a code of ``protocol.md``, ``ValueError`` for consensus messages,
``BlockInvalid`` for blocks, the wallet's keystore errors), never a ``KeyError``,
``TypeError``, ``RecursionError`` or ``UnicodeDecodeError``. A gossip frame as a whole goes
through a node's message handler, which must never raise. Example counts are bounded so
the file stays cheap on both databases.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.consensus import Proposal, Vote, proposal_body
from chain.protocol.block import make_commit, verify_commit
from chain.protocol.encoding import parse_strict
from chain.protocol.errors import HTTP_STATUS, ProtocolError
from chain.protocol.market import build_provider_auth, build_receipt, verify_provider_auth, verify_receipt
from chain.protocol.tx import check_transaction
from chain.tests.support import CHAIN_ID, MIN_FEE, named_key, transfer
from wallet.errors import WalletError
from wallet.keystore import READ_MEMLIMIT_MIN, READ_OPSLIMIT_MIN, KdfParams, decrypt_keystore, encrypt_seed

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY = named_key("fuzz")
COORDINATOR = named_key("fuzz-coordinator").address
NOW_MS = 1_800_000_000_000

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 2**53 - 1, 2**53, -1, 10**400])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "ait1", "00" * 32, "00" * 64, "prevote", "precommit", ""])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)


def mutate(data: st.DataObject, value: Any, depth: int = 0) -> Any:
    """``value`` with one change somewhere inside it: a field dropped, added, or of another value or type."""
    if isinstance(value, dict) and value and depth < 4:
        key = data.draw(st.sampled_from(sorted(value)))
        action = data.draw(st.sampled_from(["drop", "replace", "add", "descend", "descend"]))
        copy = dict(value)
        if action == "drop":
            del copy[key]
        elif action == "replace":
            copy[key] = data.draw(json_values)
        elif action == "add":
            copy[data.draw(st.text(max_size=10))] = data.draw(json_values)
        else:
            copy[key] = mutate(data, value[key], depth + 1)
        return copy
    if isinstance(value, list) and value and depth < 4:
        index = data.draw(st.integers(0, len(value) - 1))
        copy = list(value)
        copy[index] = mutate(data, value[index], depth + 1)
        return copy
    return data.draw(json_values)


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def valid_tx() -> dict[str, Any]:
    return transfer(KEY, 0, named_key("fuzz-to").address, 5)


def assert_protocol_error(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except ProtocolError as exc:
        assert exc.code in HTTP_STATUS


# -- strict JSON ---------------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_strict_json_refuses_any_bytes_with_malformed_only(body: bytes) -> None:
    try:
        parse_strict(body)
    except ProtocolError as exc:
        assert exc.code == "malformed"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
        b'{"a": 1, "a": 2}',
        b'"\\ud800"',
        b"\xff\xfe{}",
        b"1e400",
        b"NaN",
        b"9" * 5000,
    ],
    ids=["deep-list", "deep-object", "duplicate-key", "lone-surrogate", "not-utf8", "exponent", "nan", "huge-int"],
)
def test_strict_json_refuses_hostile_texts_as_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_strict(body)
    assert caught.value.code == "malformed"


# -- transactions ------------------------------------------------------------------------------------


@FAST
@given(json_values)
def test_transaction_checks_refuse_random_json_with_protocol_codes(value: Any) -> None:
    assert_protocol_error(check_transaction, value, chain_id=CHAIN_ID, min_fee=MIN_FEE)


@FAST
@given(st.data())
def test_transaction_checks_refuse_mutated_transactions_with_protocol_codes(data: st.DataObject) -> None:
    assert_protocol_error(check_transaction, mutate(data, valid_tx()), chain_id=CHAIN_ID, min_fee=MIN_FEE)


@FAST
@given(st.data())
def test_transactions_decoded_as_gossip_is_decoded_refuse_with_protocol_codes(data: st.DataObject) -> None:
    """Gossip uses the C decoder: floats, NaN, huge integers and lone surrogates reach the checks."""
    text = json.dumps(mutate(data, valid_tx()))
    assert_protocol_error(check_transaction, json.loads(text), chain_id=CHAIN_ID, min_fee=MIN_FEE)


def test_a_deeply_nested_transaction_is_malformed() -> None:
    with pytest.raises(ProtocolError) as caught:
        check_transaction(valid_tx() | {"payload": nested(50_000)}, chain_id=CHAIN_ID, min_fee=MIN_FEE)
    assert caught.value.code == "malformed"


# -- votes, proposals, commits --------------------------------------------------------------------


def valid_vote() -> dict[str, Any]:
    from chain.protocol.block import sign_vote, vote_body

    body = vote_body(chain_id=CHAIN_ID, height=3, round=0, step="prevote", block_id="ab" * 32)
    return {"type": "vote", "vote": body, "validator": KEY.address, "signature": sign_vote(KEY, body)}


def valid_proposal() -> dict[str, Any]:
    body = proposal_body(chain_id=CHAIN_ID, height=3, round_=1, pol_round=0, block_id="ab" * 32)
    return {
        "type": "proposal",
        "proposal": body,
        "block": {"header": {}},
        "proposer": KEY.address,
        "signature": "00" * 64,
    }


@FAST
@given(st.data())
def test_consensus_messages_refuse_mutations_with_value_error_only(data: st.DataObject) -> None:
    for kind, valid in ((Vote, valid_vote()), (Proposal, valid_proposal())):
        for message in (mutate(data, valid), data.draw(json_values)):
            if not isinstance(message, dict):
                continue
            try:
                kind.from_message(message, CHAIN_ID)
            except ValueError:
                pass


@FAST
@given(st.data())
def test_commits_refuse_mutations_with_protocol_codes(data: st.DataObject) -> None:
    block_id = "cd" * 32
    commit = make_commit(KEY, chain_id=CHAIN_ID, height=4, round=0, block_id=block_id)
    validators = {KEY.address: (KEY.pubkey_hex, 1)}
    for candidate in (mutate(data, commit), data.draw(json_values)):
        assert_protocol_error(
            verify_commit, candidate, chain_id=CHAIN_ID, height=4, block_id=block_id, validators=validators
        )


# -- receipts and provider authentication --------------------------------------------------------------


def signed_receipt() -> dict[str, Any]:
    return build_receipt(
        KEY,
        job_id="job-1",
        coordinator=COORDINATOR,
        model="smollm2",
        job_input={"prompt": "hi"},
        output="hello",
        input_tokens=2,
        output_tokens=1,
        started_ms=NOW_MS,
        finished_ms=NOW_MS + 10,
        finish_reason="stop",
    )


@FAST
@given(st.data())
def test_receipts_refuse_mutations_with_protocol_codes(data: st.DataObject) -> None:
    signed = signed_receipt()
    for candidate in (mutate(data, signed), data.draw(json_values)):
        assert_protocol_error(verify_receipt, candidate)


def test_a_lone_surrogate_in_any_receipt_or_authentication_string_is_malformed() -> None:
    # Decoded by a lenient decoder, a string may hold a lone surrogate, which has no UTF-8
    # form: the canonical bytes cannot be built, and the answer is a protocol error.
    signed = signed_receipt()
    auth = build_provider_auth(KEY, coordinator=COORDINATOR, purpose="connect", now_ms=NOW_MS)
    for name, value in signed["receipt"].items():
        if isinstance(value, str):
            assert_protocol_error(verify_receipt, {**signed, "receipt": {**signed["receipt"], name: "\ud800"}})
    for name, value in auth.items():
        if isinstance(value, str):
            assert_protocol_error(
                verify_provider_auth,
                {**auth, name: "\ud800"},
                coordinator=COORDINATOR,
                purpose="connect",
                now_ms=NOW_MS,
            )


@FAST
@given(st.data())
def test_provider_authentications_refuse_mutations_with_protocol_codes(data: st.DataObject) -> None:
    signed = build_provider_auth(KEY, coordinator=COORDINATOR, purpose="connect", now_ms=NOW_MS)
    for candidate in (mutate(data, signed), data.draw(json_values)):
        assert_protocol_error(
            verify_provider_auth, candidate, coordinator=COORDINATOR, purpose="connect", now_ms=NOW_MS
        )


# -- keystores ------------------------------------------------------------------------------------------

# The smallest KDF parameters a reader accepts: each decryption attempt stays cheap.
WEAK = KdfParams(READ_OPSLIMIT_MIN, READ_MEMLIMIT_MIN)
KEYSTORE = encrypt_seed(KEY.seed, "fuzz-password", params=WEAK, allow_weak_kdf=True)


def assert_wallet_error(data: Any) -> None:
    try:
        decrypt_keystore(data, "fuzz-password")
    except WalletError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_keystore_reading_refuses_any_bytes_with_wallet_errors(body: bytes | str) -> None:
    assert_wallet_error(body)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_keystore_reading_refuses_mutated_keystores_with_wallet_errors(data: st.DataObject) -> None:
    mutated = mutate(data, KEYSTORE)
    assert_wallet_error(mutated)
    try:
        text = json.dumps(mutated)
    except ValueError:
        return
    assert_wallet_error(text)
    assert_wallet_error(text.encode("utf-8", "surrogatepass"))


def test_keystore_reading_refuses_hostile_texts_with_wallet_errors() -> None:
    for body in (b"[" * 100_000, b"\xff" * 10, json.dumps(KEYSTORE).replace("{", '{"version": 1, ', 1).encode()):
        assert_wallet_error(body)
    assert decrypt_keystore(json.dumps(KEYSTORE), "fuzz-password").address == KEY.address


# -- a gossip frame, whole, through a node's handler ------------------------------------------------------


frames = (
    st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.builds(
        lambda kind, body: json.dumps({"type": kind, **body}) if isinstance(body, dict) else json.dumps(body),
        st.sampled_from(["hello", "status", "txs", "proposal", "vote", "block", "evidence", "other"]),
        json_values,
    )
)


@pytest.fixture
def gossip_driver(chain):
    from chain.network import Peer
    from chain.tests.support import gossip_node

    node = gossip_node(chain.genesis["chain_id"])
    peer = Peer(id="in-fuzz", direction="in")
    peer.send = lambda text: None
    node.gossip.add(peer)
    return node, peer


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_gossip_frame_is_handled_without_an_exception(gossip_driver, data: st.DataObject) -> None:
    node, peer = gossip_driver
    state = node.height_state
    frame = data.draw(
        frames
        | st.sampled_from([valid_vote(), valid_proposal(), {"type": "txs", "txs": [valid_tx()]}]).map(
            lambda m: json.dumps(mutate(data, m))
        )
        | st.builds(
            lambda block: json.dumps({"type": "block", "block": block, "commit": {}}),
            json_values.map(lambda v: {"header": {"height": 1, "extra": v}, "txs": [], "evidence": []}),
        )
    )
    node.seen.clear()  # each example is handled afresh, not dropped as a repeat of an earlier one
    node._on_text(peer, frame)
    assert node.height_state is state
    while not node.tx_inbox.empty():
        node._on_txs(*node.tx_inbox.get_nowait())
