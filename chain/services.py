"""Writes to the ledger: genesis, mempool admission, block production and application.

Admission writes nothing to the database: pending transactions live in this process's
mempool (``chain.mempool``). A block is written in one database transaction that first
locks the ``ChainState`` row, and it commits, and its transactions leave the mempool,
under the mempool's lock, which admission holds too: an admission sees the ledger and
the mempool of one moment. Side effects (live events) of a block go out only after commit.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from aitbc_site.events import EVENTS_GROUP, send_event, send_event_on_commit
from chain.ledger import EscrowState, LedgerView, Outcome, apply_transaction, check_escrow_rules
from chain.mempool import mempool
from chain.models import Account, Block, ChainState, Escrow, Evidence, Transaction, Validator, ValidatorApproval
from chain.protocol import batch
from chain.protocol import block as proto_block
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key
from chain.protocol.tx import NONCE_WINDOW, check_transaction, signature_valid
from chain.protocol.tx import Transaction as CheckedTx
from chain.validators import VALSET_DELAY, change_id, forget_validator_sets, validator_set_at

logger = logging.getLogger(__name__)

MEMPOOL_MAX = settings.CHAIN_MEMPOOL_MAX
MAX_BATCH = 5000
_CHUNK = 900  # stays under every database's bound on query parameters


def _chunks(items: list, size: int = _CHUNK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in(values: list) -> tuple[str, list]:
    """An ``IN`` operand and its parameters: one array on PostgreSQL, a placeholder list elsewhere."""
    if connection.vendor != "postgresql":
        return f"IN ({','.join(['%s'] * len(values))})", values
    # psycopg adapts a list element by element in Python; an array literal written here is
    # one string (ids, addresses and nonces need no escaping, anything else goes the slow way).
    if values and all(type(v) is int for v in values):
        return "= ANY(%s::bigint[])", ["{" + ",".join(map(str, values)) + "}"]
    if values and all(type(v) is str and '"' not in v and "\\" not in v for v in values):
        return "= ANY(%s::text[])", ['{"' + '","'.join(values) + '"}']
    return "= ANY(%s)", [values]


def _select_in(sql: str, values: list, *, after: list | None = None) -> list[tuple]:
    """Rows of ``sql`` over ``values``, where ``{in}`` in ``sql`` stands for ``IN (values)``.

    Raw SQL because the ORM's ``__in`` lookups prepare every value in Python, which on
    a batch of thousands costs more than the query itself. ``after``: parameters of
    placeholders after ``{in}``.
    """
    rows: list[tuple] = []
    if not values:
        return rows
    size = 20_000 if connection.vendor == "postgresql" else _CHUNK
    with connection.cursor() as cursor:
        for chunk in _chunks(values, size):
            operand, params = _in(chunk)
            cursor.execute(sql.format(**{"in": operand}), [*params, *(after or [])])
            rows.extend(cursor.fetchall())
    return rows


_TX = Transaction._meta.db_table
_ACCOUNT = Account._meta.db_table


class GenesisMismatch(Exception):
    """The database holds another chain than the genesis file describes."""


@transaction.atomic
def genesis_load(*, genesis: dict[str, Any]) -> tuple[ChainState, bool]:
    """Initialize the ledger from ``genesis``, or check it matches what is stored.

    Returns the state and whether genesis was applied now. A second start with
    the same genesis applies nothing; a different genesis is refused.
    """
    proto_block.check_genesis(genesis)
    gid = proto_block.genesis_id(genesis)
    existing = ChainState.objects.select_for_update().filter(singleton=1).first()
    if existing is not None:
        if existing.genesis_id != gid:
            raise GenesisMismatch(
                f"this data directory holds chain {existing.chain_id} with genesis {existing.genesis_id[:16]}..., "
                f"not the given genesis {gid[:16]}... ({genesis['chain_id']}); use another data directory"
            )
        return existing, False
    total = sum(entry["amount"] for entry in genesis["allocations"])
    Account.objects.bulk_create(
        [Account(address=entry["address"], balance=entry["amount"], nonce=0) for entry in genesis["allocations"]]
    )
    Validator.objects.bulk_create(
        [
            Validator(address=v["address"], pubkey=v["pubkey"], power=v["power"], effective_height=1)
            for v in genesis["validators"]
        ]
    )
    # bulk_create sends no save signal: the validator rows any thread kept are dropped here.
    forget_validator_sets()
    transaction.on_commit(forget_validator_sets)
    # A new chain: nothing pending here belongs to it.
    mempool.clear()
    state = ChainState.objects.create(
        chain_id=genesis["chain_id"],
        genesis_id=gid,
        genesis=genesis,
        params=genesis["params"],
        height=0,
        latest_block_id=gid,
        latest_block_time=proto_block.parse_time(genesis["genesis_time"]),
        total_supply=total,
    )
    logger.info(
        "genesis applied: chain %s, %d allocations, supply %d uait", state.chain_id, len(genesis["allocations"]), total
    )
    return state, True


def _head() -> tuple[int, dict[str, Any]]:
    """The chain's height and parameters, read without the ORM (admission asks for them every batch)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT height, params FROM {ChainState._meta.db_table} WHERE singleton = 1")
        row = cursor.fetchone()
    if row is None:
        raise ChainNotInitialized("this node has no chain: start it with `manage.py node --genesis FILE`")
    height, params = row
    return height, params if isinstance(params, dict) else json.loads(params)


def chain_state() -> ChainState:
    state = ChainState.objects.filter(singleton=1).first()
    if state is None:
        raise ChainNotInitialized("this node has no chain: start it with `manage.py node --genesis FILE`")
    return state


class ChainNotInitialized(Exception):
    pass


class NodeUnavailable(Exception):
    """The node cannot serve the chain now (no genesis loaded, database down)."""


@dataclass(frozen=True, slots=True)
class AdmitResult:
    id: str | None = None
    error: ProtocolError | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error.as_dict()}
        return {"id": self.id}


def mempool_admit(*, txs: list[Any], chain_id: str, min_fee: int, verified: bool = False) -> list[AdmitResult]:
    """Admit parsed transactions to the mempool; one result per input, in order.

    The stateless checks (and the signature, unless ``verified``) run before the
    mempool lock is taken, so the lock is held only for the stateful ones.
    A transaction that fails admission leaves no record.
    """
    results: list[AdmitResult | None] = [None] * len(txs)
    structured: list[tuple[int, CheckedTx]] = []
    for index, raw in enumerate(txs):
        try:
            # The fee is checked after the signature so the codes come in protocol order.
            structured.append((index, check_transaction(raw, chain_id=chain_id, min_fee=0, verify_signature=False)))
        except ProtocolError as exc:
            results[index] = AdmitResult(error=exc)
    return _admit_structured(results, structured, min_fee=min_fee, verified=verified)


def _admit_structured(
    results: list[AdmitResult | None],
    structured: list[tuple[int, CheckedTx]],
    *,
    min_fee: int,
    verified: bool = False,
    valid: dict[int, bool] | None = None,
) -> list[AdmitResult]:
    """The rest of admission for transactions that passed the stateless checks.

    ``valid`` holds signature checks already made (by index), for a caller that made
    them elsewhere (``batch_admit``); without it they are made here unless ``verified``.
    """
    # Gossip brings back transactions this node already holds: answer those as duplicates
    # without paying for their signatures again. Signatures checked already need the
    # lookup only where they failed (a known id is a duplicate before it is a bad
    # signature); the others meet their known ids under the mempool lock.
    unsure = [] if verified else [c.id for i, c in structured if valid is None or not valid[i]]
    if unsure:
        known = {tx_id for tx_id in unsure if tx_id in mempool}
        known.update(
            row[0]
            for row in _select_in(
                f"SELECT id FROM {_TX} WHERE id {{in}} AND NOT (status = 'rejected' AND height IS NULL)",
                [tx_id for tx_id in unsure if tx_id not in known],
            )
        )
        if known:
            for index, c in structured:
                if c.id in known:
                    results[index] = AdmitResult(
                        error=ProtocolError("duplicate", f"transaction {c.id} is already known")
                    )
            structured = [(i, c) for i, c in structured if c.id not in known]
    if verified:
        flags = [True] * len(structured)
    elif valid is not None:
        flags = [valid[index] for index, _c in structured]
    else:
        flags = verify_signatures([c for _i, c in structured])
    checked: list[tuple[int, CheckedTx]] = []
    for (index, c), ok in zip(structured, flags, strict=True):
        if not ok:
            results[index] = AdmitResult(error=ProtocolError("bad_signature", "the signature does not verify"))
        elif c.fee < min_fee:
            results[index] = AdmitResult(
                error=ProtocolError("fee_too_low", f"fee {c.fee} is below the minimum {min_fee}")
            )
        else:
            checked.append((index, c))
    if checked:
        admitted = _admit_checked(checked)
        for index, result in admitted:
            results[index] = result
    return results  # type: ignore[return-value]


def batch_admit(*, body: bytes, chain_id: str, min_fee: int) -> tuple[list[AdmitResult], list[dict[str, Any]]]:
    """Admit a submitted batch body: one result per transaction, and the admitted ones' wire forms.

    A large batch's stateless checks and signatures run in the check processes
    (``start_check_processes``), one batch per process, so that they neither wait for
    nor slow down the ledger work this process does under the interpreter lock. A
    body that is not a batch raises ``ProtocolError`` (``malformed``).
    """
    pool = _check_pool if len(body) >= _POOL_FROM_BYTES else None
    entries: list[batch.Entry] | None = None
    if pool is not None:
        try:
            entries = pool.submit(batch.check_batch, body, chain_id, MAX_BATCH).result()
        except BrokenProcessPool:
            # A check process died (killed, out of memory): this batch is checked here,
            # and the pool is replaced for the next one.
            _restart_check_pool(pool)
    if entries is None:
        txs = batch.parse_batch(body, MAX_BATCH)
        results = mempool_admit(txs=txs, chain_id=chain_id, min_fee=min_fee)
        return results, [tx for tx, r in zip(txs, results, strict=True) if r.error is None]
    results: list[AdmitResult | None] = [None] * len(entries)
    structured: list[tuple[int, CheckedTx]] = []
    valid: dict[int, bool] = {}
    for index, entry in enumerate(entries):
        if isinstance(entry, ProtocolError):
            results[index] = AdmitResult(error=entry)
        else:
            structured.append((index, entry[0]))
            valid[index] = entry[1]
    by_index = dict(structured)
    done = _admit_structured(results, structured, min_fee=min_fee, valid=valid)
    return done, [by_index[i].tx for i, r in enumerate(done) if r.error is None]


# Bodies from this size (about 150 transactions) are checked in the check processes;
# below it the hand-off costs more than it saves.
_POOL_FROM_BYTES = 64 * 1024
_check_pool: ProcessPoolExecutor | None = None
_check_workers = 0


def start_check_processes(workers: int | None = None) -> int:
    """Start the processes that check submitted batches (the node calls this); returns their number.

    None means one per core; fewer than two cores, or 0, means none: batches are then
    checked in this process, as they are in any process that never calls this.
    """
    global _check_pool, _check_workers
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1 or (os.cpu_count() or 1) < 2:
        return 0
    _check_workers = workers
    # Spawned, not forked: this process runs threads (the server, block production)
    # whose locks a fork would copy mid-use. The children import only chain.protocol.
    _check_pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=batch.watch_parent,
        initargs=(os.getpid(),),
    )
    # Started now, so the first batch does not wait for interpreters to boot.
    for future in [_check_pool.submit(batch.parse_batch, b"[]", 0) for _ in range(workers)]:
        future.result()
    return workers


def stop_check_processes() -> None:
    global _check_pool
    pool, _check_pool = _check_pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


_restart_lock = threading.Lock()


def _restart_check_pool(broken: ProcessPoolExecutor) -> None:
    """Replace ``broken`` (once, however many batches found it broken at the same time)."""
    global _check_pool
    with _restart_lock:
        if _check_pool is not broken:
            return
        logger.warning("a transaction check process died; restarting the check processes")
        _check_pool = None
        broken.shutdown(wait=False, cancel_futures=True)
        try:
            start_check_processes(_check_workers)
        except Exception:
            logger.exception("could not restart the transaction check processes; checking batches in-process")


_write_lock = threading.Lock()


@contextmanager
def _writing():
    """Queue this process's ledger writers in Python before they open their transaction.

    The database serializes them anyway (the state row lock, SQLite's write lock), but a
    writer waiting on SQLite's busy handler sleeps in steps of up to 100 ms after the
    lock is free; here it wakes at once. A caller already inside a transaction may hold
    the database's lock, so it does not wait here (that could deadlock).
    """
    if connection.in_atomic_block:
        yield
        return
    with _write_lock:
        yield


_verify_pool: ThreadPoolExecutor | None = None
_PARALLEL_FROM = 256


def verify_signatures(checked: list[CheckedTx]) -> list[bool]:
    """Verify many signatures, spread over the cores for large batches.

    libsodium runs without the GIL (cffi releases it), so threads verify in parallel.
    """
    global _verify_pool
    workers = os.cpu_count() or 1
    if len(checked) < _PARALLEL_FROM or workers == 1:
        return [signature_valid(c) for c in checked]
    if _verify_pool is None:
        _verify_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")
    size = -(-len(checked) // workers)
    parts = [checked[i : i + size] for i in range(0, len(checked), size)]
    return [ok for part in _verify_pool.map(lambda p: [signature_valid(c) for c in p], parts) for ok in part]


def _admit_checked(checked: list[tuple[int, CheckedTx]]) -> list[tuple[int, AdmitResult]]:
    with mempool.lock:
        out = _admit_locked(checked)
    admitted = sum(1 for _i, r in out if r.error is None)
    if admitted:
        send_event(EVENTS_GROUP, {"type": "mempool", "admitted": admitted})
    return out


# SQLite copies its write-ahead log back into the database (a checkpoint, with an fsync)
# in the commit that grows the log past a threshold, 1,000 pages by default, under the
# write lock. The block producer raises it and checkpoints once per block, after its
# commit (``block_produce``).
_CHECKPOINT_PAGES = 20_000


def _defer_checkpoints() -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")


def _checkpoint() -> None:
    if connection.vendor == "sqlite" and not connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _admit_locked(checked: list[tuple[int, CheckedTx]]) -> list[tuple[int, AdmitResult]]:
    """The stateful admission checks, against the ledger and the mempool (``mempool.lock`` held)."""
    height, params = _head()
    senders = list({c.sender for _i, c in checked})
    accounts: dict[str, tuple[int, int]] = {
        address: (balance, nonce)
        for address, balance, nonce in _select_in(
            f"SELECT address, balance, nonce FROM {_ACCOUNT} WHERE address {{in}}", senders
        )
    }
    # A nonce below the account's is refused either way; a stored id tells "duplicate" from "bad_nonce".
    suspects = [c.id for _i, c in checked if c.nonce < accounts.get(c.sender, (0, 0))[1]]
    existing: dict[str, tuple[str, int | None]] = {
        tx_id: (status, tx_height)
        for tx_id, status, tx_height in _select_in(f"SELECT id, status, height FROM {_TX} WHERE id {{in}}", suspects)
    }
    escrow_ids = list({c.payload["escrow"] for _i, c in checked if "escrow" in c.payload})
    escrows: dict[str, EscrowState | None] = {}
    for chunk in _chunks(escrow_ids):
        for e in Escrow.objects.filter(id__in=chunk):
            escrows[e.id] = escrow_state(e)

    out: list[tuple[int, AdmitResult]] = []
    received_at = timezone.now()
    validators: dict[str, tuple[str, int]] | None = None
    for index, c in checked:
        spend = c.spend
        try:
            if c.id in mempool:
                raise ProtocolError("duplicate", f"transaction {c.id} is already pending")
            if c.id in existing:
                status, tx_height = existing[c.id]
                if status != Transaction.REJECTED or tx_height is not None:
                    raise ProtocolError("duplicate", f"transaction {c.id} is already {status}")
            balance, account_nonce = accounts.get(c.sender, (0, 0))
            if c.nonce < account_nonce:
                raise ProtocolError("bad_nonce", f"nonce {c.nonce} is below the account nonce {account_nonce}")
            if c.nonce > account_nonce + NONCE_WINDOW:
                raise ProtocolError(
                    "bad_nonce",
                    f"nonce {c.nonce} is beyond the window (account nonce {account_nonce} + {NONCE_WINDOW})",
                )
            if mempool.pending_at(c.sender, c.nonce) is not None:
                raise ProtocolError("duplicate", f"another transaction from {c.sender} with nonce {c.nonce} is pending")
            pending_spend = mempool.spend_of(c.sender)
            if balance - pending_spend < spend:
                raise ProtocolError(
                    "insufficient_funds",
                    f"balance {balance} less pending spends {pending_spend} cannot cover {spend}",
                )
            if c.type == "escrow_lock" and c.payload["timeout_height"] < height + 1 + params["min_escrow_blocks"]:
                raise ProtocolError(
                    "timeout_too_short",
                    f"timeout_height must be at least {height + 1 + params['min_escrow_blocks']} "
                    f"(next height {height + 1} + min_escrow_blocks {params['min_escrow_blocks']})",
                )
            if c.type in ("escrow_pay", "escrow_refund"):
                escrow_id = c.payload["escrow"]
                escrow = escrows.get(escrow_id)
                if escrow is None and mempool.lock_pending(escrow_id):
                    pass  # its lock is pending: the rules are checked when both are applied
                else:
                    check_escrow_rules(escrow, kind=c.type, sender=c.sender, payload=c.payload, height=height)
                    pending_pays = mempool.pays_of(escrow_id)
                    if c.type == "escrow_pay" and c.payload["amount"] + pending_pays > escrow.remaining:
                        raise ProtocolError(
                            "exceeds_escrow",
                            f"pay of {c.payload['amount']} plus pending pays {pending_pays} exceeds "
                            f"the {escrow.remaining} remaining",
                        )
            if c.type == "validator_update":
                if validators is None:
                    validators = validator_set_at(height + 1)
                if c.sender not in validators:
                    raise ProtocolError("not_validator", "only a current validator may approve a validator set change")
            if len(mempool) >= MEMPOOL_MAX:
                raise ProtocolError("mempool_full", "the mempool is full; retry later")
        except ProtocolError as exc:
            out.append((index, AdmitResult(error=exc)))
            continue
        mempool.add(c, received_at=received_at)
        out.append((index, AdmitResult(id=c.id)))
    return out


_TX_COLUMNS = (
    "id, seq, sender, nonce, fee, type, spend, escrow, body, status, height, error_code, error_message, received_at"
)


def _insert_decided(rows: list[tuple]) -> None:
    """Store transactions a block decided, one row each in ``_TX_COLUMNS`` order.

    A transaction dropped from an earlier block (rejected, no height) may be decided
    again: its old row is replaced. The ORM's bulk_create spends more time building SQL
    than the database spends inserting: SQLite gets one prepared statement for the
    batch, PostgreSQL a COPY (psycopg's executemany adapts every parameter in Python).
    """
    if not rows:
        return
    ids = [row[0] for row in rows]
    with connection.cursor() as cursor:
        for chunk in _chunks(ids, 20_000 if connection.vendor == "postgresql" else _CHUNK):
            operand, params = _in(chunk)
            cursor.execute(f"DELETE FROM {_TX} WHERE id {operand} AND status = 'rejected' AND height IS NULL", params)
        if connection.vendor == "postgresql":
            with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {_TX} ({_TX_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        # Rows admitted together share one arrival time: each is adapted once.
        stamps: dict[datetime, str] = {}
        for moment in {row[13] for row in rows}:
            stamps[moment] = connection.ops.adapt_datetimefield_value(moment)
        cursor.executemany(
            f"INSERT INTO {_TX} ({_TX_COLUMNS}) VALUES ({', '.join(['%s'] * 14)})",
            [(*row[:13], stamps[row[13]]) for row in rows],
        )


def escrow_state(e: Escrow) -> EscrowState:
    """The ledger's in-memory view of a stored escrow."""
    return EscrowState(
        id=e.id,
        job_id=e.job_id,
        payer=e.payer,
        arbiter=e.arbiter,
        amount=e.amount,
        paid=e.paid,
        refunded=e.refunded,
        timeout_height=e.timeout_height,
        open=e.status == Escrow.OPEN,
        opened_height=e.opened_height,
        closed_height=e.closed_height,
    )


def _select_candidates(limit: int) -> tuple[list[CheckedTx], list[CheckedTx]]:
    """Pending transactions for the next block: per sender, consecutive nonces from its account nonce.

    Returns the candidates in block order, senders taken by the arrival of their next
    transaction, and the stale pending ones (nonce below the account's, which can no
    longer apply). Transactions waiting behind a nonce gap are not taken, so however
    many there are they cannot crowd ready ones out of the block.
    """
    # A sender's lowest pending nonce is its next one if any is: senders in the arrival
    # order of their lowest pending transaction, their account nonces read as needed.
    with mempool.lock:
        firsts = sorted(
            (mempool.get(nonces[min(nonces)]).seq, sender)
            for sender in mempool.senders()
            if (nonces := mempool.nonces_of(sender))
        )
    chosen: list[CheckedTx] = []
    stale: list[CheckedTx] = []
    for start in range(0, len(firsts), _CHUNK):
        part = [sender for _seq, sender in firsts[start : start + _CHUNK]]
        account_nonces = dict(_select_in(f"SELECT address, nonce FROM {_ACCOUNT} WHERE address {{in}}", part))
        with mempool.lock:
            for sender in part:
                nonces = mempool.nonces_of(sender)
                expected = account_nonces.get(sender, 0)
                stale.extend(mempool.get(tx_id).tx for nonce, tx_id in nonces.items() if nonce < expected)
                while expected in nonces and len(chosen) < limit:
                    chosen.append(mempool.get(nonces[expected]).tx)
                    expected += 1
                if len(chosen) >= limit:
                    break
        if len(chosen) >= limit:
            break
    return chosen, stale


def _apply(view: LedgerView, c: CheckedTx, *, height: int, proposer: str, params: dict[str, Any]) -> Outcome:
    """Apply one candidate to ``view`` at ``height`` (the one call every block path makes)."""
    return apply_transaction(
        view,
        tx_id=c.id,
        sender=c.sender,
        nonce=c.nonce,
        fee=c.fee,
        kind=c.type,
        payload=c.payload,
        height=height,
        proposer=proposer,
        min_escrow_blocks=params["min_escrow_blocks"],
    )


def _load_view(candidates: list[CheckedTx], proposer: str) -> LedgerView:
    view = LedgerView()
    escrow_ids = {c.payload["escrow"] for c in candidates if "escrow" in c.payload}
    for chunk in _chunks(list(escrow_ids)):
        for e in Escrow.objects.filter(id__in=chunk):
            view.escrows[e.id] = escrow_state(e)
    addresses = {proposer}
    for c in candidates:
        addresses.add(c.sender)
        if "to" in c.payload:
            addresses.add(c.payload["to"])
    addresses.update(e.payer for e in view.escrows.values() if e is not None)
    for address, balance, nonce in _select_in(
        f"SELECT address, balance, nonce FROM {_ACCOUNT} WHERE address {{in}}", list(addresses)
    ):
        view.accounts[address] = [balance, nonce]
    return view


def _write_view(view: LedgerView) -> None:
    table = Account._meta.db_table
    # Sorted, the rows meet the primary key's B-tree pages in order.
    rows = [(address, *view.accounts[address]) for address in sorted(view.touched_accounts)]
    if rows and connection.vendor == "postgresql":
        addresses, balances, nonces = (list(column) for column in zip(*rows, strict=True))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (address, balance, nonce) "
                "SELECT * FROM unnest(%s::varchar[], %s::bigint[], %s::bigint[]) "
                "ON CONFLICT (address) DO UPDATE SET balance = excluded.balance, nonce = excluded.nonce",
                [addresses, balances, nonces],
            )
    elif rows:
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table} (address, balance, nonce) VALUES (%s, %s, %s) "
                "ON CONFLICT (address) DO UPDATE SET balance = excluded.balance, nonce = excluded.nonce",
                rows,
            )
    new, changed = [], []
    for escrow_id in view.touched_escrows:
        e = view.escrows[escrow_id]
        assert e is not None
        (new if e.new else changed).append(e)
    if new:
        Escrow.objects.bulk_create(
            [
                Escrow(
                    id=e.id,
                    job_id=e.job_id,
                    payer=e.payer,
                    arbiter=e.arbiter,
                    amount=e.amount,
                    paid=e.paid,
                    refunded=e.refunded,
                    timeout_height=e.timeout_height,
                    status=Escrow.OPEN if e.open else Escrow.CLOSED,
                    opened_height=e.opened_height,
                    closed_height=e.closed_height,
                )
                for e in new
            ]
        )
    if changed:
        with connection.cursor() as cursor:
            cursor.executemany(
                f"UPDATE {Escrow._meta.db_table} SET paid = %s, refunded = %s, status = %s, closed_height = %s "
                "WHERE id = %s",
                [
                    (e.paid, e.refunded, Escrow.OPEN if e.open else Escrow.CLOSED, e.closed_height, e.id)
                    for e in changed
                ],
            )


def block_produce(*, key: Key, now_ms: int | None = None) -> Block | None:
    """Build, commit and apply the next block from the mempool (one-validator chains).

    Returns None when it is not yet time for the next block. Safe to call
    concurrently or twice: the state row lock and the block height's primary
    key let only one block per height through.
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    # The block is built before the locks are taken, so admissions go on meanwhile.
    # What it reads (pending transactions, accounts, escrows, validators) only a block
    # changes, bar transactions admitted since, so it is stored as built if the head has
    # not moved; otherwise rebuilt.
    before = chain_state()
    draft = _draft_block(before, key, now_ms)
    if draft is None:
        return None
    _defer_checkpoints()
    with mempool.lock:
        with _writing(), transaction.atomic():
            state = ChainState.objects.select_for_update().get(singleton=1)
            if (state.height, state.latest_block_id) != (before.height, before.latest_block_id):
                draft = _draft_block(state, key, now_ms)
                if draft is None:
                    return None
            block, decided = _store_block(state, *draft)
        mempool.remove(decided)
    _checkpoint()
    return block


def _draft_block(state: ChainState, key: Key, now_ms: int) -> tuple | None:
    """The next block on ``state`` and its effects, as ``_store_block``'s arguments; None if too early."""
    last_ms = int(state.latest_block_time.timestamp() * 1000)
    if state.height > 0 and now_ms < last_ms + state.params["block_time_ms"]:
        return None
    time_ms = max(now_ms, last_ms + 1)
    height = state.height + 1
    candidates, stale = _select_candidates(state.params["max_block_txs"])
    view = _load_view(candidates, key.address)
    view.validators = validator_set_at(height)
    included: list[CheckedTx] = []
    results: dict[str, tuple[str, str]] = {}
    dropped: list[tuple[CheckedTx, str, str]] = []
    for c in candidates:
        outcome = _apply(view, c, height=height, proposer=key.address, params=state.params)
        if outcome.included:
            included.append(c)
            if outcome.code:
                results[c.id] = (outcome.code, outcome.message[:300])
        else:
            dropped.append((c, outcome.code or "", outcome.message[:300]))
    dropped.extend((c, "bad_nonce", "nonce below the account nonce") for c in stale)
    header = proto_block.block_header(
        chain_id=state.chain_id,
        height=height,
        prev_id=state.latest_block_id,
        time_ms=time_ms,
        proposer=key.address,
        tx_ids=[c.id for c in included],
    )
    bid = proto_block.block_id(header)
    commit = proto_block.make_commit(key, chain_id=state.chain_id, height=height, round=0, block_id=bid)
    return header, bid, included, results, commit, dropped, view


def _store_block(
    state: ChainState,
    header: dict,
    bid: str,
    included: list[CheckedTx],
    results: dict[str, tuple[str, str]],
    commit: dict,
    dropped: list[tuple[CheckedTx, str, str]],
    view: LedgerView,
    evidence: list | None = None,
) -> tuple[Block, list[str]]:
    """Write a block and its effects (``mempool.lock`` held, inside the block's database transaction).

    ``results``: code and message of each included transaction the block rejected;
    ``dropped``: transactions it left out for good, with code and message (rejected, no
    height). Returns the block and the ids to take out of the mempool once it commits.
    """
    height = header["height"]
    moment = datetime.fromtimestamp(header["time_ms"] / 1000, tz=UTC)
    block = Block(
        height=height,
        id=bid,
        prev_id=header["prev_id"],
        header=header,
        tx_ids=[c.id for c in included],
        results={tx_id: code for tx_id, (code, _message) in results.items()},
        commit=commit,
        evidence=evidence or [],
        time=moment,
        proposer=header["proposer"],
        tx_count=len(included),
    )
    _insert_row(block)
    _write_view(view)
    _apply_approvals(view.approvals, height)
    # A pending transaction holding the sender and nonce of one in the block lost the race.
    ids = {c.id for c in included}
    losers = mempool.same_slot({(c.sender, c.nonce) for c in included}, ids)
    lost = f"another transaction with this sender and nonce was committed at height {height}"
    # (transaction, status, height, code, message) of each row, in storage order.
    decided = [
        (c, Transaction.REJECTED, height, *results[c.id])
        if c.id in results
        else (c, Transaction.COMMITTED, height, "", "")
        for c in included
    ]
    decided += [(c, Transaction.REJECTED, None, code, message) for c, code, message in dropped]
    decided += [(p.tx, Transaction.REJECTED, None, "duplicate", lost) for p in losers]
    now = timezone.now()
    rows = []
    for seq, (c, status, tx_height, code, message) in enumerate(decided, start=state.mempool_seq + 1):
        entry = mempool.get(c.id)
        escrow = c.payload.get("escrow", "")
        received_at = entry.received_at if entry is not None else now
        rows.append(
            (
                c.id,
                seq,
                c.sender,
                c.nonce,
                c.fee,
                c.type,
                c.spend,
                escrow,
                c.body,
                status,
                tx_height,
                code,
                message,
                received_at,
            )
        )
    _insert_decided(rows)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {ChainState._meta.db_table} SET height = %s, latest_block_id = %s, latest_block_time = %s, "
            "mempool_seq = %s WHERE singleton = 1 AND height = %s",
            [height, bid, connection.ops.adapt_datetimefield_value(moment), state.mempool_seq + len(rows), height - 1],
        )
        updated = cursor.rowcount
    if updated != 1:
        raise RuntimeError(f"chain head moved while applying block {height}")
    send_event_on_commit(
        EVENTS_GROUP,
        {
            "type": "block",
            "height": height,
            "id": bid,
            "time": proto_block.format_time_ms(header["time_ms"]),
            "tx_count": len(included),
        },
    )
    return block, [row[0] for row in rows]


def _insert_row(instance: Any) -> None:
    """INSERT one model row without the ORM's save machinery (none of these models has save signals).

    Each height stores a block: compiling ``Model.save`` cost more than the write.
    """
    meta = instance._meta
    fields = meta.concrete_fields
    q = connection.ops.quote_name
    values = [f.get_db_prep_save(getattr(instance, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {q(meta.db_table)} ({', '.join(q(f.column) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})",
            values,
        )
    instance._state.adding = False
    instance._state.db = connection.alias


def _apply_approvals(approvals: list[tuple[str, str, int, str]], height: int) -> None:
    """Record validator set approvals; a change approved by more than 2/3 of the power is scheduled."""
    if not approvals:
        return
    # Read before this block's writes, and forgotten once they commit (another thread may
    # read the rows meanwhile and keep what it read).
    transaction.on_commit(forget_validator_sets)
    current = validator_set_at(height)
    total = sum(power for _pub, power in current.values())
    for address, pubkey, power, approver in approvals:
        cid = change_id(address, pubkey, power)
        ValidatorApproval.objects.get_or_create(
            change=cid,
            approver=approver,
            defaults={"address": address, "pubkey": pubkey, "power": power, "height": height},
        )
        pending = ValidatorApproval.objects.filter(change=cid, applied=False)
        approved = sum(current.get(a.approver, ("", 0))[1] for a in pending)
        if pending.exists() and 3 * approved > 2 * total:
            effective = height + VALSET_DELAY
            Validator.objects.update_or_create(
                address=address,
                effective_height=effective,
                defaults={"pubkey": pubkey, "power": power, "reason": f"validator_update approved at height {height}"},
            )
            pending.update(applied=True)
            logger.info("validator set change: %s power %d from height %d", address, power, effective)


# -- multi-validator blocks: proposed, checked by every validator, committed with a commit --


class BlockInvalid(Exception):
    """A proposed or synced block breaks a rule; the message says which."""


def block_build(
    *, proposer: str, round_: int, now_ms: int | None = None, state: ChainState | None = None
) -> tuple[str, dict[str, Any]]:
    """A proposal for the next height from this node's mempool and pending evidence (no writes).

    ``state`` is the chain head as the caller read it, when it knows no block was applied since
    (the consensus thread, which applies them).
    """
    state = state or chain_state()
    height = state.height + 1
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    last_ms = int(state.latest_block_time.timestamp() * 1000)
    candidates, _stale = _select_candidates(state.params["max_block_txs"])
    view = _load_view(candidates, proposer)
    view.validators = validator_set_at(height)
    txs, ids = [], []
    for c in candidates:
        outcome = _apply(view, c, height=height, proposer=proposer, params=state.params)
        if outcome.included:
            txs.append(c.tx)
            ids.append(c.id)  # the id computed at admission: no need to encode and hash again
    evidence = [e.votes for e in Evidence.objects.filter(included_height__isnull=True).order_by("height")[:20]]
    evidence = [e for e in evidence if _evidence_problem(e, height) is None]
    header = proto_block.block_header(
        chain_id=state.chain_id,
        height=height,
        prev_id=state.latest_block_id,
        time_ms=max(now_ms, last_ms + 1),
        proposer=proposer,
        tx_ids=ids,
        round=round_,
        evidence_ids=[proto_block.evidence_id(e) for e in evidence],
    )
    return proto_block.block_id(header), {"header": header, "txs": txs, "evidence": evidence}


def _evidence_problem(evidence: Any, height: int) -> str | None:
    """Why ``evidence`` cannot be included at ``height``, or None when it can."""
    from chain.consensus import Vote

    state = chain_state()
    if not isinstance(evidence, dict) or set(evidence) != {"votes"} or not isinstance(evidence["votes"], list):
        return "evidence is {votes: [two votes]}"
    if len(evidence["votes"]) != 2:
        return "evidence holds exactly two votes"
    try:
        a, b = (Vote.from_message(v, state.chain_id) for v in evidence["votes"])
    except (ValueError, TypeError, AttributeError) as exc:
        return f"evidence vote malformed: {exc}"
    if (a.validator, a.height, a.round, a.step) != (b.validator, b.height, b.round, b.step) or a.block_id == b.block_id:
        return "evidence votes are not two different votes of one validator for one step"
    if a.height >= height:
        return "evidence is from a height not yet decided"
    validators = validator_set_at(a.height)
    if a.validator not in validators:
        return "evidence names a validator outside the set at that height"
    pubkey = validators[a.validator][0]
    if not (
        proto_block.verify_vote(pubkey, a.body(state.chain_id), a.signature)
        and proto_block.verify_vote(pubkey, b.body(state.chain_id), b.signature)
    ):
        return "an evidence vote's signature does not verify"
    if Evidence.objects.filter(validator=a.validator, height=a.height, included_height__isnull=False).exists():
        return "this double signing is already punished"
    return None


def evidence_record(*, votes: dict[str, Any]) -> bool:
    """Store evidence of double signing (idempotent); True when it is new and valid.

    Conflicting votes are seen while their height is still being decided: that height's
    evidence is kept too, and goes into a block from the next height on.
    """
    state = chain_state()
    problem = _evidence_problem(votes, state.height + 2)
    if problem is not None:
        return False
    first = votes["votes"][0]
    _, created = Evidence.objects.get_or_create(
        validator=first["validator"],
        height=first["vote"]["height"],
        defaults={"id": proto_block.evidence_id(votes), "votes": votes},
    )
    return created


def _apply_block_txs(
    checked: list[CheckedTx],
    *,
    proposer: str,
    validators: dict[str, tuple[str, int]],
    height: int,
    params: dict[str, Any],
) -> tuple[LedgerView, dict[str, tuple[str, str]]]:
    """A block's transactions applied to a view of the accounts they touch: the view, and the
    code and message of each transaction it rejected, by id. ``BlockInvalid`` when one cannot
    be included at all."""
    view = _load_view(checked, proposer)
    view.validators = validators
    results: dict[str, tuple[str, str]] = {}
    for c in checked:
        outcome = _apply(view, c, height=height, proposer=proposer, params=params)
        if not outcome.included:
            raise BlockInvalid(f"block transaction {c.id} cannot be applied: {outcome.code}")
        if outcome.code:
            results[c.id] = (outcome.code, outcome.message[:300])
    return view, results


def block_check(body: Any, *, state: ChainState | None = None) -> str:
    """Every rule a proposed block must meet to be the next block; returns its id.

    Signatures of transactions already in this node's mempool were verified at
    admission and are not verified again. ``state`` is the chain head as the caller
    read it, when it knows no block was applied since (the consensus thread, which
    applies them).
    """
    state = state or chain_state()
    if not isinstance(body, dict) or set(body) != {"header", "txs", "evidence"}:
        raise BlockInvalid("a block is {header, txs, evidence}")
    header, txs, evidence = body["header"], body["txs"], body["evidence"]
    if not isinstance(header, dict) or set(header) != proto_block.HEADER_FIELDS:
        raise BlockInvalid("block header has the wrong fields")
    if not isinstance(txs, list) or not isinstance(evidence, list):
        raise BlockInvalid("block txs and evidence are lists")
    height = state.height + 1
    if header["chain_id"] != state.chain_id or header["height"] != height:
        raise BlockInvalid(f"block is for {header['chain_id']} height {header['height']}, expected height {height}")
    if header["prev_id"] != state.latest_block_id:
        raise BlockInvalid("block does not extend this node's latest block")
    if type(header["time_ms"]) is not int or header["time_ms"] <= int(state.latest_block_time.timestamp() * 1000):
        raise BlockInvalid("block time is not after the previous block's")
    if header["time_ms"] > int(time.time() * 1000) + 30_000:
        raise BlockInvalid("block time is more than 30 s in the future")
    validators = validator_set_at(height)
    if header["proposer"] not in validators:
        raise BlockInvalid("block proposer is not a validator at this height")
    if header["tx_count"] != len(txs) or len(txs) > state.params["max_block_txs"]:
        raise BlockInvalid("block tx_count is wrong or above max_block_txs")
    min_fee = state.params["min_fee"]
    try:
        # Transactions admitted here were checked then (same chain, same rules): their checked
        # form is reused; the others are checked now.
        checked = [
            c
            if c is not None and c.fee >= min_fee
            else check_transaction(tx, chain_id=state.chain_id, min_fee=min_fee, verify_signature=False)
            for tx, c in zip(txs, mempool.checked_forms(txs), strict=True)
        ]
    except ProtocolError as exc:
        raise BlockInvalid(f"block transaction refused: {exc}") from None
    ids = [c.id for c in checked]
    if len(set(ids)) != len(ids) or proto_block.tx_root(ids) != header["tx_root"]:
        raise BlockInvalid("block tx_root does not match its transactions")
    # Pending here (admitted, signature verified): not verified again.
    with mempool.lock:
        unknown = [c for c in checked if c.id not in mempool]
    if not all(verify_signatures(unknown)):
        raise BlockInvalid("a block transaction's signature does not verify")
    for item in evidence:
        problem = _evidence_problem(item, height)
        if problem is not None:
            raise BlockInvalid(problem)
    if proto_block.tx_root([proto_block.evidence_id(e) for e in evidence]) != header["evidence_root"]:
        raise BlockInvalid("block evidence_root does not match its evidence")
    view, results = _apply_block_txs(
        checked, proposer=header["proposer"], validators=validators, height=height, params=state.params
    )
    bid = proto_block.block_id(header)
    _checked_blocks.put(bid, _CheckedBlock(state.latest_block_id, checked, view, results))
    return bid


@dataclass
class _CheckedBlock:
    """What ``block_check`` worked out for a block, which applying it on the same state needs again."""

    prev_id: str
    txs: list[CheckedTx]
    view: LedgerView  # the block applied to the state it was checked against
    results: dict[str, tuple[str, str]]


class _CheckedBlocks:
    """The last few checked blocks by id (a height sees one proposal a round)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.items: dict[str, _CheckedBlock] = {}
        self.lock = threading.Lock()

    def put(self, bid: str, entry: _CheckedBlock) -> None:
        with self.lock:
            self.items.pop(bid, None)
            self.items[bid] = entry
            while len(self.items) > self.capacity:
                self.items.pop(next(iter(self.items)))

    def take(self, bid: str, prev_id: str) -> _CheckedBlock | None:
        """The entry of block ``bid`` if it was checked on top of ``prev_id``, this node's head now.

        Accounts and escrows change only when a block is applied, which moves the head, so
        an entry checked on the current head still describes the state exactly.
        """
        with self.lock:
            entry = self.items.pop(bid, None)
        return entry if entry is not None and entry.prev_id == prev_id else None


_checked_blocks = _CheckedBlocks()


def block_commit(*, body: dict[str, Any], commit: dict[str, Any], checked: bool = False) -> Block:
    """Apply a decided block with its commit, in one database transaction.

    Idempotent: committing the block already at that height returns it. The
    commit must hold precommits of more than 2/3 of the power at that height.
    ``checked`` says this node's consensus already ran ``block_check`` on it
    against the same state (the state cannot move between: one thread decides), and
    built the commit itself from precommits whose signatures it verified as they came.
    """
    with mempool.lock:
        with transaction.atomic():
            block, decided = _commit_locked(body, commit, checked)
        mempool.remove(decided)
    return block


def _commit_locked(body: dict[str, Any], commit: dict[str, Any], checked: bool) -> tuple[Block, list[str]]:
    state = ChainState.objects.select_for_update().get(singleton=1)
    header = body["header"]
    bid = proto_block.block_id(header)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {Block._meta.db_table} WHERE height = %s", [header["height"]])
        existing = cursor.fetchone()
    if existing is not None:
        if existing[0] != bid:
            raise BlockInvalid(f"a different block is already final at height {header['height']}")
        return Block.objects.get(height=header["height"]), []
    if header["height"] != state.height + 1:
        raise BlockInvalid(f"block {header['height']} does not follow height {state.height}")
    if not checked:
        try:
            proto_block.verify_commit(
                commit,
                chain_id=state.chain_id,
                height=header["height"],
                block_id=bid,
                validators=validator_set_at(header["height"]),
            )
        except ProtocolError as exc:
            raise BlockInvalid(f"commit refused: {exc.message}") from None
    height = header["height"]
    # The checked form, ledger view and outcomes block_check computed, when it ran on this head.
    # A block id names its header, which names its transactions' ids and its evidence: a block
    # checked under this id (its proposal) needs no second check when it arrives with its commit.
    cached = _checked_blocks.take(bid, state.latest_block_id)
    if cached is None and not checked:
        block_check(body, state=state)
        cached = _checked_blocks.take(bid, state.latest_block_id)
    if cached is not None:
        txs, view, results = cached.txs, cached.view, cached.results
    else:
        txs = [check_transaction(tx, chain_id=state.chain_id, min_fee=0, verify_signature=False) for tx in body["txs"]]
        view, results = _apply_block_txs(
            txs, proposer=header["proposer"], validators=validator_set_at(height), height=height, params=state.params
        )
    for item in body["evidence"]:
        _jail(item, height)
    return _store_block(state, header, bid, txs, results, commit, [], view, body["evidence"])


def _jail(evidence: dict[str, Any], height: int) -> None:
    """Punish double signing: the validator stops counting from the next height."""
    first = evidence["votes"][0]
    validator, vote_height = first["validator"], first["vote"]["height"]
    Evidence.objects.update_or_create(
        validator=validator,
        height=vote_height,
        defaults={"id": proto_block.evidence_id(evidence), "votes": evidence, "included_height": height},
    )
    pubkey = validator_set_at(height).get(validator, ("", 0))[0]
    if pubkey:
        transaction.on_commit(forget_validator_sets)
        Validator.objects.update_or_create(
            address=validator,
            effective_height=height + 1,
            defaults={"pubkey": pubkey, "power": 0, "reason": f"jailed: double signing at height {vote_height}"},
        )
        logger.warning(
            "validator %s jailed from height %d (double signing at height %d)", validator, height + 1, vote_height
        )
