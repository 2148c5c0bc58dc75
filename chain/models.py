"""The ledger's state: chain head, accounts, transactions, blocks, escrows.

Money-moving writes live in ``chain/ledger.py`` and ``chain/services.py``;
these models hold fields and constraints. Amounts are integers in uait.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class ChainStateManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        # The head is read for every admitted batch, block and status request; the genesis
        # document (every allocation) by none of them: it is loaded only when accessed.
        return super().get_queryset().defer("genesis")


class ChainState(models.Model):
    """The single row describing this node's chain: its genesis and its head.

    Block application locks this row first, so blocks are serialized on PostgreSQL;
    on SQLite the IMMEDIATE transaction does that.
    """

    objects = ChainStateManager()

    singleton = models.PositiveSmallIntegerField(primary_key=True, default=1)
    chain_id = models.CharField(max_length=64)
    genesis_id = models.CharField(max_length=64, help_text="SHA-256 of the genesis file's canonical JSON")
    genesis = models.JSONField()
    params = models.JSONField()
    height = models.BigIntegerField(default=0)
    latest_block_id = models.CharField(max_length=64)
    latest_block_time = models.DateTimeField()
    total_supply = models.BigIntegerField()
    mempool_seq = models.BigIntegerField(default=0, help_text="storage number of the last stored transaction")

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(singleton=1), name="chainstate_singleton")]

    def __str__(self) -> str:
        return f"{self.chain_id} at height {self.height}"


class Validator(models.Model):
    """The validator set's history: from ``effective_height`` on, ``address`` has ``power``.

    The set at a height is, per address, its latest row at or below that height,
    without those of power 0 (removed or jailed). Genesis rows take effect at height 1.
    """

    address = models.CharField(max_length=64)
    pubkey = models.CharField(max_length=64)
    power = models.PositiveBigIntegerField()
    effective_height = models.BigIntegerField()
    reason = models.CharField(max_length=200, default="genesis")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["address", "effective_height"], name="validator_change_once_per_height")
        ]
        indexes = [models.Index(fields=["effective_height"], name="validator_effective")]

    def __str__(self) -> str:
        return f"{self.address} power {self.power} from height {self.effective_height}"


class ValidatorApproval(models.Model):
    """One validator's ``validator_update`` transaction approving a change of the set."""

    change = models.CharField(max_length=64, help_text="SHA-256 of the change's canonical JSON")
    address = models.CharField(max_length=64)
    pubkey = models.CharField(max_length=64)
    power = models.PositiveBigIntegerField()
    approver = models.CharField(max_length=64)
    height = models.BigIntegerField()
    applied = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["change", "approver"], name="approval_once_per_validator")]


class Evidence(models.Model):
    """Two conflicting signed votes of one validator at one height, round and step."""

    id = models.CharField(max_length=64, primary_key=True, help_text="SHA-256 of the evidence's canonical JSON")
    validator = models.CharField(max_length=64)
    height = models.BigIntegerField(help_text="height of the conflicting votes")
    votes = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    included_height = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["validator", "height"], name="evidence_once_per_height")]

    def __str__(self) -> str:
        return f"{self.validator} at height {self.height}"


class SignerState(models.Model):
    """What this node's validator key signed last, written before it signs.

    Steps are ordered proposal < prevote < precommit; the key never signs at or below
    the recorded (height, round, step) something other than what it signed there.
    """

    singleton = models.PositiveSmallIntegerField(primary_key=True, default=1)
    height = models.BigIntegerField(default=0)
    round = models.BigIntegerField(default=0)
    step = models.PositiveSmallIntegerField(default=0)
    block_id = models.CharField(max_length=64, blank=True, default="")
    signature = models.CharField(max_length=128, blank=True, default="")
    locked = models.JSONField(null=True, blank=True, help_text="{height, round, block_id, block} of the current lock")


class Account(models.Model):
    address = models.CharField(max_length=64, primary_key=True)
    balance = models.BigIntegerField(default=0)
    nonce = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="account_balance_not_negative"),
            models.CheckConstraint(condition=Q(nonce__gte=0), name="account_nonce_not_negative"),
        ]

    def __str__(self) -> str:
        return self.address


class Transaction(models.Model):
    """A transaction a block decided: committed, rejected by its code inside the block, or
    dropped by the block producer (rejected, no height).

    Pending transactions are not stored: they live in the node's memory (``chain.mempool``),
    and the RPC answers for them from there. ``body`` is the transaction's canonical JSON
    (signature included). A transaction that failed admission is never stored.
    """

    PENDING = "pending"
    COMMITTED = "committed"
    REJECTED = "rejected"
    STATUSES = [(PENDING, "pending"), (COMMITTED, "committed"), (REJECTED, "rejected")]

    id = models.CharField(max_length=64, primary_key=True)
    seq = models.BigIntegerField(help_text="storage order on this node (the order blocks decided transactions)")
    sender = models.CharField(max_length=64)
    nonce = models.BigIntegerField()
    fee = models.BigIntegerField()
    type = models.CharField(max_length=16)
    spend = models.BigIntegerField(help_text="fee plus what the type takes from the sender's balance")
    escrow = models.CharField(max_length=64, blank=True, default="", help_text="escrow a pay or refund refers to")
    body = models.TextField()
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    height = models.BigIntegerField(null=True, blank=True, help_text="block that included it")
    error_code = models.CharField(max_length=32, blank=True, default="")
    error_message = models.CharField(max_length=300, blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.id


class Block(models.Model):
    height = models.BigIntegerField(primary_key=True)
    id = models.CharField(max_length=64, unique=True)
    prev_id = models.CharField(max_length=64)
    header = models.JSONField()
    tx_ids = models.JSONField(help_text="ids of the included transactions, in order")
    results = models.JSONField(default=dict, help_text="{tx id: error code} for included transactions rejected")
    commit = models.JSONField()
    evidence = models.JSONField(default=list, help_text="evidence of double signing the block carries")
    time = models.DateTimeField()
    proposer = models.CharField(max_length=64)
    tx_count = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"#{self.height} {self.id[:12]}"


class Escrow(models.Model):
    """An escrow opened by ``escrow_lock``; its id is the lock transaction's id."""

    OPEN = "open"
    CLOSED = "closed"

    id = models.CharField(max_length=64, primary_key=True)
    job_id = models.CharField(max_length=64)
    payer = models.CharField(max_length=64)
    arbiter = models.CharField(max_length=64)
    amount = models.BigIntegerField()
    paid = models.BigIntegerField(default=0)
    refunded = models.BigIntegerField(default=0)
    timeout_height = models.BigIntegerField()
    status = models.CharField(max_length=6, choices=[(OPEN, "open"), (CLOSED, "closed")], default=OPEN)
    opened_height = models.BigIntegerField()
    closed_height = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["job_id"], name="escrow_job"),
            models.Index(fields=["payer"], name="escrow_payer"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(paid__gte=0) & Q(refunded__gte=0), name="escrow_nonnegative"),
            models.CheckConstraint(
                condition=Q(amount__gte=models.F("paid") + models.F("refunded")), name="escrow_within"
            ),
        ]

    @property
    def remaining(self) -> int:
        return self.amount - self.paid - self.refunded

    def __str__(self) -> str:
        return self.id
