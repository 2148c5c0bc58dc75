"""Writes to the ledger: genesis, mempool admission, block production and application.

Every write runs in one database transaction that first locks the
``ChainState`` row, so admissions and block application are serialized on
PostgreSQL (on SQLite the IMMEDIATE transaction does the same). Side effects
(live events) go out only after commit.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from aitbc_site.events import EVENTS_GROUP, send_event_on_commit
from chain.ledger import EscrowState, LedgerView, Outcome, apply_transaction, check_escrow_rules
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

    The stateless checks (and the signature, unless ``verified``) run before
    the database transaction so the lock is held only for the stateful ones.
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
    # signature); the others meet their known ids under the write lock.
    unsure = [] if verified else [c.id for i, c in structured if valid is None or not valid[i]]
    if unsure:
        known = {
            row[0]
            for row in _select_in(
                f"SELECT id FROM {_TX} WHERE id {{in}} AND NOT (status = 'rejected' AND height IS NULL)", unsure
            )
        }
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
    _defer_checkpoints()
    try:
        with _writing(), transaction.atomic():
            return _admit_locked(checked)
    except IntegrityError:
        # An id already stored where the first pass did not look for one: a transaction
        # dropped from a block (rejected, no height) that came back. Nothing of that pass
        # was kept; this one looks up every id.
        with _writing(), transaction.atomic():
            return _admit_locked(checked, every_id=True)


# SQLite copies its write-ahead log back into the database (a checkpoint, with an fsync)
# in the commit that grows the log past a threshold, 1,000 pages by default: every
# admitted batch paid one, under the write lock. Ledger writers raise it, and the block
# producer checkpoints once per block, after its commit (``block_produce``).
_CHECKPOINT_PAGES = 20_000


def _defer_checkpoints() -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")


def _checkpoint() -> None:
    if connection.vendor == "sqlite" and not connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _admit_locked(checked: list[tuple[int, CheckedTx]], *, every_id: bool = False) -> list[tuple[int, AdmitResult]]:
    state = ChainState.objects.select_for_update().get(singleton=1)
    height = state.height
    params = state.params
    senders = list({c.sender for _i, c in checked})

    accounts: dict[str, tuple[int, int]] = {
        address: (balance, nonce)
        for address, balance, nonce in _select_in(
            f"SELECT address, balance, nonce FROM {_ACCOUNT} WHERE address {{in}}", senders
        )
    }
    # What the batch's senders have pending: the sum their balances must still cover, and
    # the (sender, nonce) pairs taken. One read of their pending rows serves both (summing
    # needs each row anyway: spend is not in the index).
    pending_spend: dict[str, int] = defaultdict(int)
    pending_nonces: set[tuple[str, int]] = set()
    for sender, nonce, spend in _select_in(
        f"SELECT sender, nonce, spend FROM {_TX} WHERE status = 'pending' AND sender {{in}}", senders
    ):
        pending_spend[sender] += spend
        pending_nonces.add((sender, nonce))
    # A stored id is either pending, so its (sender, nonce) is pending, or was included in
    # a block, so its nonce is below the account's: only those are looked up. The one
    # other kind, a transaction dropped from a block, fails the insert on its primary key
    # (``_admit_checked`` then passes ``every_id``).
    suspects = [
        c.id
        for _i, c in checked
        if every_id or c.nonce < accounts.get(c.sender, (0, 0))[1] or (c.sender, c.nonce) in pending_nonces
    ]
    existing: dict[str, tuple[str, int | None]] = {
        tx_id: (status, tx_height)
        for tx_id, status, tx_height in _select_in(f"SELECT id, status, height FROM {_TX} WHERE id {{in}}", suspects)
    }
    escrow_ids = list({c.payload["escrow"] for _i, c in checked if "escrow" in c.payload})
    escrows: dict[str, EscrowState | None] = {}
    pending_pays: dict[str, int] = defaultdict(int)
    pending_locks: set[str] = set()
    if escrow_ids:
        for chunk in _chunks(escrow_ids):
            for e in Escrow.objects.filter(id__in=chunk):
                escrows[e.id] = escrow_state(e)
            # The exclude states the partial index's condition so the planner may use it.
            for escrow_id, tx_type, body in (
                Transaction.objects.filter(escrow__in=chunk, status=Transaction.PENDING)
                .exclude(escrow="")
                .values_list("escrow", "type", "body")
            ):
                if tx_type == "escrow_pay":
                    pending_pays[escrow_id] += json.loads(body)["payload"]["amount"]
            pending_locks.update(
                Transaction.objects.filter(id__in=chunk, status=Transaction.PENDING, type="escrow_lock").values_list(
                    "id", flat=True
                )
            )
    # Counting the mempool walks all of it; the span of its arrival numbers (each unique,
    # handed out under this lock) bounds the count from two index lookups, and only a
    # batch that could reach MEMPOOL_MAX within that bound needs the exact count.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT MIN(seq) FROM {_TX} WHERE status = 'pending'), "
            f"(SELECT MAX(seq) FROM {_TX} WHERE status = 'pending')"
        )
        low, high = cursor.fetchone()
    pending_count = 0 if low is None else high - low + 1
    if pending_count + len(checked) > MEMPOOL_MAX:
        pending_count = Transaction.objects.filter(status=Transaction.PENDING).count()

    out: list[tuple[int, AdmitResult]] = []
    rows: list[tuple] = []
    revived: list[str] = []
    seq = state.mempool_seq + 1
    batch_ids: set[str] = set()
    validators: dict[str, tuple[str, int]] | None = None
    for index, c in checked:
        spend = c.spend
        try:
            if c.id in batch_ids:
                raise ProtocolError("duplicate", f"transaction {c.id} appears twice in this batch")
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
            if (c.sender, c.nonce) in pending_nonces:
                raise ProtocolError("duplicate", f"another transaction from {c.sender} with nonce {c.nonce} is pending")
            if balance - pending_spend[c.sender] < spend:
                raise ProtocolError(
                    "insufficient_funds",
                    f"balance {balance} less pending spends {pending_spend[c.sender]} cannot cover {spend}",
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
                if escrow is None and escrow_id in pending_locks:
                    pass  # its lock is pending: the rules are checked when both are applied
                else:
                    check_escrow_rules(escrow, kind=c.type, sender=c.sender, payload=c.payload, height=height)
                    if c.type == "escrow_pay" and c.payload["amount"] + pending_pays[escrow_id] > escrow.remaining:
                        raise ProtocolError(
                            "exceeds_escrow",
                            f"pay of {c.payload['amount']} plus pending pays {pending_pays[escrow_id]} exceeds "
                            f"the {escrow.remaining} remaining",
                        )
                if c.type == "escrow_pay":
                    pending_pays[escrow_id] += c.payload["amount"]
            if c.type == "validator_update":
                if validators is None:
                    validators = validator_set_at(height + 1)
                if c.sender not in validators:
                    raise ProtocolError("not_validator", "only a current validator may approve a validator set change")
            if pending_count + len(rows) >= MEMPOOL_MAX:
                raise ProtocolError("mempool_full", "the mempool is full; retry later")
        except ProtocolError as exc:
            out.append((index, AdmitResult(error=exc)))
            continue
        if c.id in existing:
            revived.append(c.id)
        batch_ids.add(c.id)
        pending_nonces.add((c.sender, c.nonce))
        pending_spend[c.sender] += spend
        if c.type == "escrow_lock":
            pending_locks.add(c.id)
        rows.append((c.id, seq, c.sender, c.nonce, c.fee, c.type, spend, c.payload.get("escrow", ""), c.body))
        seq += 1
        out.append((index, AdmitResult(id=c.id)))
    if revived:
        # A transaction dropped from a block (its sender could not pay the fee) may come back.
        Transaction.objects.filter(id__in=revived, status=Transaction.REJECTED, height__isnull=True).delete()
    if rows:
        _insert_pending(rows)
        ChainState.objects.filter(singleton=1).update(mempool_seq=seq - 1)
        admitted = [c for _i, c in checked if c.id in batch_ids]
        transaction.on_commit(lambda: _admitted.add(admitted))
        send_event_on_commit(EVENTS_GROUP, {"type": "mempool", "admitted": len(rows)})
    return out


_PENDING_COLUMNS = "id, seq, sender, nonce, fee, type, spend, escrow, body, status, height, error_code, error_message"


def _insert_pending(rows: list[tuple]) -> None:
    # The ORM's bulk_create spends more time building SQL than the database spends
    # inserting: SQLite gets one prepared statement for the batch, PostgreSQL a COPY
    # (psycopg's executemany adapts every parameter in Python, row by row).
    received = timezone.now()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The raw cursor's COPY bypasses Django's error wrapping: a conflict must still
            # surface as django.db.IntegrityError (``_admit_checked`` retries on it).
            with (
                connection.wrap_database_errors,
                cursor.cursor.copy(
                    f"COPY {Transaction._meta.db_table} ({_PENDING_COLUMNS}, received_at) FROM STDIN"
                ) as copy,
            ):
                for row in rows:
                    copy.write_row((*row, "pending", None, "", "", received))
            return
        stamp = connection.ops.adapt_datetimefield_value(received)
        # In (sender, nonce) order the two indexes on those columns take the rows in key
        # order, each B-tree page once, instead of one random page per row.
        rows = sorted(rows, key=lambda row: (row[2], row[3]))
        cursor.executemany(
            f"INSERT INTO {Transaction._meta.db_table} ({_PENDING_COLUMNS}, received_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', NULL, '', '', %s)",
            [(*row, stamp) for row in rows],
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


@dataclass
class Candidate:
    id: str
    sender: str
    nonce: int
    fee: int
    type: str
    payload: dict[str, Any]
    tx: dict[str, Any] | None = None


def _select_candidates(limit: int) -> tuple[list[Candidate], list[str]]:
    """Pending transactions for the next block: per sender, consecutive nonces from its account nonce.

    Returns the candidates in block order and the ids of stale pending ones
    (nonce below the account's, which can no longer apply).
    """
    tx_table, account_table = Transaction._meta.db_table, Account._meta.db_table
    with connection.cursor() as cursor:
        # Senders whose next transaction is ready (its nonce is the account's), oldest first.
        # Transactions waiting behind a nonce gap are not read at all, so however many
        # there are they cannot crowd ready ones out of the block.
        cursor.execute(
            f"SELECT t.sender, t.nonce FROM {tx_table} t LEFT JOIN {account_table} a ON a.address = t.sender "
            f"WHERE t.status = 'pending' AND t.nonce = COALESCE(a.nonce, 0) ORDER BY t.seq LIMIT %s",
            [limit],
        )
        heads = cursor.fetchall()
        # SQLite would walk the pending rows by arrival and read each from the table; the
        # (sender, nonce) index of pending rows answers from the index alone, five times faster.
        hint = " INDEXED BY tx_one_pending_per_nonce" if connection.vendor == "sqlite" else ""
        cursor.execute(
            f"SELECT t.id FROM {tx_table} t{hint} JOIN {account_table} a ON a.address = t.sender "
            f"WHERE t.status = 'pending' AND t.nonce < a.nonce LIMIT 1000"
        )
        stale = [row[0] for row in cursor.fetchall()]
    if not heads:
        return [], stale
    by_sender: dict[str, dict[int, tuple]] = defaultdict(dict)
    for row in _select_in(
        f"SELECT id, sender, nonce, fee, type FROM {tx_table} WHERE status = 'pending' AND sender {{in}}",
        [sender for sender, _n in heads],
    ):
        by_sender[row[1]][row[2]] = row
    chosen_rows: list[tuple] = []
    for sender, expected in heads:
        txs = by_sender[sender]
        while expected in txs and len(chosen_rows) < limit:
            chosen_rows.append(txs[expected])
            expected += 1
        if len(chosen_rows) >= limit:
            break
    parsed = _admitted.lookup([row[0] for row in chosen_rows])
    missing = [row[0] for row in chosen_rows if row[0] not in parsed]
    for tx_id, body in _select_in(f"SELECT id, body FROM {tx_table} WHERE id {{in}}", missing):
        parsed[tx_id] = json.loads(body)
    chosen = [Candidate(r[0], r[1], r[2], r[3], r[4], parsed[r[0]]["payload"], parsed[r[0]]) for r in chosen_rows]
    return chosen, stale


class _AdmittedCache:
    """Transactions this process admitted, already parsed, until a block takes them.

    Block production runs in the process that admits (the node), so the block need
    not read and parse every body back from the database. A miss (another process
    admitted it, or it was evicted) falls back to the stored body.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.items: dict[str, dict[str, Any]] = {}
        # The checked form by signature, so a block's copy of a transaction is recognized
        # without encoding and hashing it again (``block_check``).
        self.checked: dict[str, CheckedTx] = {}
        self.lock = threading.Lock()

    def add(self, txs: list[CheckedTx]) -> None:
        with self.lock:
            for c in txs:
                self.items[c.id] = c.tx
                self.checked[c.tx["signature"]] = c
            while len(self.items) > self.capacity:
                self._drop(next(iter(self.items)))

    def lookup(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {i: self.items[i] for i in ids if i in self.items}

    def discard(self, ids: list[str]) -> None:
        with self.lock:
            for tx_id in ids:
                self._drop(tx_id)

    def _drop(self, tx_id: str) -> None:
        tx = self.items.pop(tx_id, None)
        if tx is not None:
            self.checked.pop(tx["signature"], None)

    def checked_forms(self, txs: list[Any]) -> list[CheckedTx | None]:
        """For each wire transaction, the checked form admitted here if it is exactly that one.

        Exactly: equal and of the same JSON types field by field (``1``, ``1.0`` and
        ``true`` are equal in Python but not on the wire), so its canonical encoding,
        id and signature are the admitted ones.
        """
        with self.lock:
            found = [
                self.checked.get(tx["signature"]) if type(tx) is dict and type(tx.get("signature")) is str else None
                for tx in txs
            ]
        return [c if c is not None and _same_wire(tx, c.tx) else None for tx, c in zip(txs, found, strict=True)]


def _same_wire(tx: dict[str, Any], known: dict[str, Any]) -> bool:
    if tx is known:
        return True
    if tx != known or any(type(v) is not type(known[k]) for k, v in tx.items()):
        return False
    payload = known["payload"]
    return all(type(v) is type(payload[k]) for k, v in tx["payload"].items())


_admitted = _AdmittedCache()


def _apply(view: LedgerView, c: Candidate, *, height: int, proposer: str, params: dict[str, Any]) -> Outcome:
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


def _load_view(candidates: list[Candidate], proposer: str) -> LedgerView:
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
    # The block is built before the write lock is taken, so admissions go on meanwhile.
    # What it reads (pending transactions, accounts, escrows, validators) only a block
    # changes, so it is stored as built if the head has not moved; otherwise rebuilt.
    before = chain_state()
    draft = _draft_block(before, key, now_ms)
    if draft is None:
        return None
    _defer_checkpoints()
    with _writing(), transaction.atomic():
        state = ChainState.objects.select_for_update().get(singleton=1)
        if (state.height, state.latest_block_id) != (before.height, before.latest_block_id):
            draft = _draft_block(state, key, now_ms)
            if draft is None:
                return None
        block = _store_block(state, *draft)
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
    included: list[str] = []
    results: dict[str, str] = {}
    rejected: list[tuple[str, str, str]] = []
    dropped: list[tuple[str, str, str]] = []
    for c in candidates:
        outcome = _apply(view, c, height=height, proposer=key.address, params=state.params)
        if outcome.included:
            included.append(c.id)
            if outcome.code:
                results[c.id] = outcome.code
                rejected.append((outcome.code, outcome.message[:300], c.id))
        else:
            dropped.append((outcome.code or "", outcome.message[:300], c.id))
    header = proto_block.block_header(
        chain_id=state.chain_id,
        height=height,
        prev_id=state.latest_block_id,
        time_ms=time_ms,
        proposer=key.address,
        tx_ids=included,
    )
    bid = proto_block.block_id(header)
    commit = proto_block.make_commit(key, chain_id=state.chain_id, height=height, round=0, block_id=bid)
    return header, bid, included, results, commit, rejected, dropped, stale, view


def _store_block(
    state: ChainState,
    header: dict,
    bid: str,
    included: list[str],
    results: dict[str, str],
    commit: dict,
    rejected: list[tuple[str, str, str]],
    dropped: list[tuple[str, str, str]],
    stale: list[str],
    view: LedgerView,
    evidence: list | None = None,
) -> Block:
    height = header["height"]
    moment = datetime.fromtimestamp(header["time_ms"] / 1000, tz=UTC)
    block = Block.objects.create(
        height=height,
        id=bid,
        prev_id=header["prev_id"],
        header=header,
        tx_ids=included,
        results=results,
        commit=commit,
        evidence=evidence or [],
        time=moment,
        proposer=header["proposer"],
        tx_count=len(included),
    )
    _write_view(view)
    _apply_approvals(view.approvals, height)
    table = Transaction._meta.db_table
    with connection.cursor() as cursor:
        committed = sorted(tx_id for tx_id in included if tx_id not in results)
        if connection.vendor == "sqlite":
            # SQLite walks an id list in id order, a random order for the table and for
            # the pending indexes each row leaves; in rowid (arrival) order the same
            # update costs a third.
            rowids = sorted(row[0] for row in _select_in(f"SELECT rowid FROM {table} WHERE id {{in}}", committed))
            for chunk in _chunks(rowids):
                marks = ",".join(["%s"] * len(chunk))
                cursor.execute(
                    f"UPDATE {table} SET status = 'committed', height = %s WHERE rowid IN ({marks})", [height, *chunk]
                )
        else:
            for chunk in _chunks(committed, 20_000):
                operand, ids = _in(chunk)
                cursor.execute(
                    f"UPDATE {table} SET status = 'committed', height = %s WHERE id {operand}", [height, *ids]
                )
        if rejected:
            cursor.executemany(
                f"UPDATE {table} SET status = 'rejected', height = {int(height)}, error_code = %s, "
                "error_message = %s WHERE id = %s",
                rejected,
            )
        if dropped:
            cursor.executemany(
                f"UPDATE {table} SET status = 'rejected', error_code = %s, error_message = %s WHERE id = %s", dropped
            )
        if stale:
            cursor.executemany(
                f"UPDATE {table} SET status = 'rejected', error_code = 'bad_nonce', "
                "error_message = 'nonce below the account nonce' WHERE id = %s",
                [(tx_id,) for tx_id in stale],
            )
    transaction.on_commit(lambda: _admitted.discard(included))
    updated = ChainState.objects.filter(singleton=1, height=height - 1).update(
        height=height, latest_block_id=bid, latest_block_time=moment
    )
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
    return block


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
            ids.append(c.id)  # the id stored at admission: no need to encode and hash again
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


_TX_TABLE = Transaction._meta.db_table


def _rows_in(sql: str, values: list, *, suffix: str = "", extra: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` + ``(values...)`` + ``suffix``, a chunk of ``values`` at a time.

    Raw SQL: the ORM's ``__in`` lookup prepares every value in Python, which on a
    block of thousands of ids costs more than the query.
    """
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        for chunk in _chunks(values, _CHUNK - len(extra)):
            cursor.execute(f"{sql}({','.join(['%s'] * len(chunk))}){suffix}", [*chunk, *extra])
            rows.extend(cursor.fetchall())
    return rows


def _apply_block_txs(
    checked: list[CheckedTx],
    *,
    proposer: str,
    validators: dict[str, tuple[str, int]],
    height: int,
    params: dict[str, Any],
) -> tuple[LedgerView, dict[str, str], list[tuple[str, str, str]]]:
    """A block's transactions applied to a view of the accounts they touch: the view, each
    rejected transaction's code by id, and the rows of those rejections. ``BlockInvalid`` when
    one cannot be included at all."""
    candidates = [Candidate(c.id, c.sender, c.nonce, c.fee, c.type, c.payload, c.tx) for c in checked]
    view = _load_view(candidates, proposer)
    view.validators = validators
    results: dict[str, str] = {}
    rejected: list[tuple[str, str, str]] = []
    for c in candidates:
        outcome = _apply(view, c, height=height, proposer=proposer, params=params)
        if not outcome.included:
            raise BlockInvalid(f"block transaction {c.id} cannot be applied: {outcome.code}")
        if outcome.code:
            results[c.id] = outcome.code
            rejected.append((outcome.code, outcome.message[:300], c.id))
    return view, results, rejected


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
            for tx, c in zip(txs, _admitted.checked_forms(txs), strict=True)
        ]
    except ProtocolError as exc:
        raise BlockInvalid(f"block transaction refused: {exc}") from None
    ids = [c.id for c in checked]
    if len(set(ids)) != len(ids) or proto_block.tx_root(ids) != header["tx_root"]:
        raise BlockInvalid("block tx_root does not match its transactions")
    # Admitted here (signature verified) and not yet in a block: in memory, else pending in the database.
    known = set(_admitted.lookup(ids))
    rest = [i for i in ids if i not in known]
    known.update(row[0] for row in _rows_in(f"SELECT id FROM {_TX_TABLE} WHERE status = 'pending' AND id IN ", rest))
    unknown = [c for c in checked if c.id not in known]
    if not all(verify_signatures(unknown)):
        raise BlockInvalid("a block transaction's signature does not verify")
    for item in evidence:
        problem = _evidence_problem(item, height)
        if problem is not None:
            raise BlockInvalid(problem)
    if proto_block.tx_root([proto_block.evidence_id(e) for e in evidence]) != header["evidence_root"]:
        raise BlockInvalid("block evidence_root does not match its evidence")
    view, results, rejected = _apply_block_txs(
        checked, proposer=header["proposer"], validators=validators, height=height, params=state.params
    )
    bid = proto_block.block_id(header)
    _checked_blocks.put(bid, _CheckedBlock(state.latest_block_id, checked, view, results, rejected))
    return bid


@dataclass
class _CheckedBlock:
    """What ``block_check`` worked out for a block, which applying it on the same state needs again."""

    prev_id: str
    txs: list[CheckedTx]
    view: LedgerView  # the block applied to the state it was checked against
    results: dict[str, str]
    rejected: list[tuple[str, str, str]]


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
    with transaction.atomic():
        state = ChainState.objects.select_for_update().get(singleton=1)
        header = body["header"]
        bid = proto_block.block_id(header)
        existing = Block.objects.filter(height=header["height"]).first()
        if existing is not None:
            if existing.id != bid:
                raise BlockInvalid(f"a different block is already final at height {header['height']}")
            return existing
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
            block_check(body)
            cached = _checked_blocks.take(bid, state.latest_block_id)
        if cached is not None:
            checked = cached.txs
        else:
            checked = [
                check_transaction(tx, chain_id=state.chain_id, min_fee=0, verify_signature=False) for tx in body["txs"]
            ]
        ids = [c.id for c in checked]
        present: dict[str, tuple[str, int | None]] = {
            i: (st, h) for i, st, h in _rows_in(f"SELECT id, status, height FROM {_TX_TABLE} WHERE id IN ", ids)
        }
        # A pending transaction of this node with the sender and nonce of one in the block lost the race.
        # Admission keeps one pending transaction per sender and nonce, so only the block's
        # transactions not pending here can have lost one: in the usual block there are none.
        pairs = {(c.sender, c.nonce) for c in checked if present.get(c.id, ("", None))[0] != Transaction.PENDING}
        id_set = set(ids)
        nonces = tuple({n for _s, n in pairs})
        # Narrowed by nonce too when there are few distinct nonces (the usual block): a sender's
        # whole pending queue would otherwise be read for each block.
        narrow = len(nonces) < _CHUNK // 2
        rows = _rows_in(
            f"SELECT id, sender, nonce FROM {_TX_TABLE} WHERE status = 'pending' AND sender IN ",
            list({p[0] for p in pairs}),
            suffix=f" AND nonce IN ({','.join(['%s'] * len(nonces))})" if narrow else "",
            extra=nonces if narrow else (),
        )
        losers = [tx_id for tx_id, sender, nonce in rows if (sender, nonce) in pairs and tx_id not in id_set]
        if losers:
            Transaction.objects.filter(id__in=losers).update(
                status=Transaction.REJECTED,
                error_code="duplicate",
                error_message=f"another transaction with this sender and nonce was committed at height {height}",
            )
        revive = [i for i, (st, h) in present.items() if st == Transaction.REJECTED and h is None]
        if revive:
            Transaction.objects.filter(id__in=revive).delete()
        missing = [c for c in checked if c.id not in present or c.id in revive]
        if missing:
            seq = state.mempool_seq + 1
            _insert_pending(
                [
                    (c.id, seq + n, c.sender, c.nonce, c.fee, c.type, c.spend, c.payload.get("escrow", ""), c.body)
                    for n, c in enumerate(missing)
                ]
            )
            ChainState.objects.filter(singleton=1).update(mempool_seq=seq + len(missing) - 1)
        if cached is not None:
            view, results, rejected = cached.view, cached.results, cached.rejected
        else:
            view, results, rejected = _apply_block_txs(
                checked,
                proposer=header["proposer"],
                validators=validator_set_at(height),
                height=height,
                params=state.params,
            )
        for item in body["evidence"]:
            _jail(item, height)
        return _store_block(state, header, bid, ids, results, commit, rejected, [], [], view, body["evidence"])


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
