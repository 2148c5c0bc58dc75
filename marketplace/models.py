"""The coordinator's records: providers and offers, jobs and their history, deposits, and the
outbox of transactions it sends to the chain.

Lock order, everywhere money or capacity moves (``services``): Deposit, then Job, then
Offer, then Provider, then CoordinatorAccount, then OutboxTx rows. Correctness rests on
conditional UPDATEs and unique constraints; the row locks keep PostgreSQL writers from
deadlocking (on SQLite, writers queue on the database's write lock anyway).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


def new_job_id() -> str:
    # Fits the escrow label rule ([A-Za-z0-9._:-]{1,64}) so a client may use it as its escrow's job_id.
    return f"job-{uuid.uuid4().hex}"


def new_deposit_id() -> str:
    return f"dep-{uuid.uuid4().hex}"


class Provider(models.Model):
    """A provider, known by its chain address (where it is paid)."""

    address = models.CharField(max_length=64, primary_key=True)
    pubkey = models.CharField(max_length=64)
    name = models.CharField(max_length=100)
    url = models.CharField(max_length=300, blank=True, default="")
    token_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the bearer token, hex")
    first_registered_at = models.DateTimeField()
    registered_at = models.DateTimeField()
    online = models.BooleanField(default=False)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    ws_connections = models.IntegerField(default=0, help_text="open websockets (a hint: silence decides)")
    reported_active = models.IntegerField(default=0, help_text="jobs running, as the provider last said")
    online_ms = models.BigIntegerField(default=0, help_text="time seen online since first registration")
    jobs_completed = models.IntegerField(default=0)
    jobs_failed = models.IntegerField(default=0, help_text="errors, missed deadlines, refused receipts, drops")
    jobs_rejected = models.IntegerField(default=0, help_text="jobs it declined after they were pushed")
    jobs_disputed = models.IntegerField(default=0, help_text="completed jobs its clients disputed")
    latency_ms_total = models.BigIntegerField(default=0, help_text="assignment to accepted result, summed")

    class Meta:
        indexes = [models.Index(fields=["online", "last_seen_at"], name="provider_online")]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


class Offer(models.Model):
    """What a provider serves and at what price (uait per 1,000 tokens)."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="offers")
    model = models.CharField(max_length=200)
    input_price = models.BigIntegerField()
    output_price = models.BigIntegerField()
    context_length = models.IntegerField()
    concurrency = models.IntegerField()
    active = models.IntegerField(default=0, help_text="jobs assigned or running on this offer")
    withdrawn = models.BooleanField(default=False, help_text="left out of the provider's latest registration")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="offer_unique_provider_model"),
            models.CheckConstraint(condition=Q(active__gte=0), name="offer_active_not_negative"),
        ]
        indexes = [models.Index(fields=["model", "withdrawn"], name="offer_model")]

    def __str__(self) -> str:
        return f"{self.model} by {self.provider_id}"


class AuthNonce(models.Model):
    """Provider authentication nonces seen recently: a replayed authentication is refused."""

    nonce = models.CharField(max_length=32, primary_key=True)
    provider = models.CharField(max_length=64)
    seen_at = models.DateTimeField(db_index=True)


class Deposit(models.Model):
    """A client's larger escrow (arbiter: the coordinator) that many jobs draw on.

    Books, all in uait: ``reserved`` is the max price of the jobs in flight, ``charged``
    what completed jobs cost, ``paid`` what committed payouts moved out of the escrow.
    A job is accepted only while ``amount - charged - reserved`` covers its max price.
    """

    PENDING, OPEN, CLOSING, CLOSED, FAILED = "pending", "open", "closing", "closed", "failed"
    STATES = [(s, s) for s in (PENDING, OPEN, CLOSING, CLOSED, FAILED)]

    id = models.CharField(max_length=40, primary_key=True, default=new_deposit_id)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="deposits")
    payer = models.CharField(max_length=64)
    escrow_id = models.CharField(max_length=64, unique=True)
    amount = models.BigIntegerField()
    timeout_height = models.BigIntegerField()
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    reason = models.CharField(max_length=300, blank=True, default="")
    reserved = models.BigIntegerField(default=0)
    charged = models.BigIntegerField(default=0)
    paid = models.BigIntegerField(default=0)
    refunded = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(reserved__gte=0), name="deposit_reserved_not_negative"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="deposit_amount_not_negative"),
        ]
        indexes = [models.Index(fields=["state"], name="deposit_state")]

    @property
    def available(self) -> int:
        return self.amount - self.charged - self.reserved


class DepositPayout(models.Model):
    """One escrow_pay out of a deposit to one provider, covering a batch of jobs."""

    QUEUED, COMMITTED, REJECTED = "queued", "committed", "rejected"
    STATES = [(s, s) for s in (QUEUED, COMMITTED, REJECTED)]

    deposit = models.ForeignKey(Deposit, on_delete=models.PROTECT, related_name="payouts")
    provider = models.CharField(max_length=64)
    amount = models.BigIntegerField()
    jobs = models.IntegerField()
    state = models.CharField(max_length=10, choices=STATES, default=QUEUED)
    created_at = models.DateTimeField(auto_now_add=True)


class Job(models.Model):
    SUBMITTED = "submitted"  # waiting for its escrow to commit
    FUNDED = "funded"  # paid for; waiting for a provider
    ASSIGNED = "assigned"  # pushed to a provider, not yet accepted
    RUNNING = "running"
    COMPLETED = "completed"  # result accepted and metered; payment on its way
    SETTLED = "settled"  # provider paid (and the rest refunded)
    CANCELLED = "cancelled"  # by its client; refund on its way
    EXPIRED = "expired"  # not completed in time; refund on its way
    FAILED = "failed"  # every attempt failed; refund on its way
    REFUNDED = "refunded"
    UNFUNDED = "unfunded"  # its escrow was refused by the chain: nothing to refund
    STATES = [
        (s, s)
        for s in (
            SUBMITTED,
            FUNDED,
            ASSIGNED,
            RUNNING,
            COMPLETED,
            SETTLED,
            CANCELLED,
            EXPIRED,
            FAILED,
            REFUNDED,
            UNFUNDED,
        )
    ]
    IN_FLIGHT = (ASSIGNED, RUNNING)
    ACTIVE = (SUBMITTED, FUNDED, ASSIGNED, RUNNING, COMPLETED, CANCELLED, EXPIRED, FAILED)
    FINAL = (SETTLED, REFUNDED, UNFUNDED)
    TO_REFUND = (CANCELLED, EXPIRED, FAILED)

    ESCROW, WALLET, DEPOSIT = "escrow", "wallet", "deposit"
    PAYMENTS = [(p, p) for p in (ESCROW, WALLET, DEPOSIT)]

    id = models.CharField(max_length=40, primary_key=True, default=new_job_id)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    token_hash = models.CharField(max_length=64, blank=True, default="", help_text="job token of anonymous clients")
    model = models.CharField(max_length=200)
    input = models.JSONField(help_text='{"prompt"} or {"messages"}, as dispatched')
    options = models.JSONField(help_text="max_tokens, temperature_milli, seed, stop, as dispatched")
    input_tokens_estimate = models.IntegerField()
    max_price = models.BigIntegerField()
    payment = models.CharField(max_length=10, choices=PAYMENTS)
    payer = models.CharField(max_length=64, blank=True, default="")
    escrow_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    escrow_amount = models.BigIntegerField(null=True, blank=True)
    escrow_timeout_height = models.BigIntegerField(null=True, blank=True)
    escrow_funded = models.BooleanField(default=False, help_text="the per-job escrow's lock committed")
    deposit = models.ForeignKey(Deposit, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs")
    payout = models.ForeignKey(DepositPayout, null=True, blank=True, on_delete=models.PROTECT, related_name="paid_jobs")

    state = models.CharField(max_length=10, choices=STATES, default=SUBMITTED)
    reason = models.CharField(max_length=300, blank=True, default="")
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs")
    offer = models.ForeignKey(Offer, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    input_price = models.BigIntegerField(null=True, blank=True, help_text="the offer's, when assigned")
    output_price = models.BigIntegerField(null=True, blank=True)
    context_length = models.IntegerField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    delivered_at = models.DateTimeField(null=True, blank=True, help_text="pushed or handed to a poll")
    accept_by = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    cancel_grace_until = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    output = models.TextField(blank=True, default="")
    receipt = models.JSONField(null=True, blank=True, help_text="the provider's signed receipt")
    input_tokens = models.IntegerField(null=True, blank=True)
    output_tokens = models.IntegerField(null=True, blank=True)
    charge = models.BigIntegerField(null=True, blank=True)
    refund = models.BigIntegerField(null=True, blank=True)
    disputed_at = models.DateTimeField(null=True, blank=True)
    dispute_reason = models.CharField(max_length=500, blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True)
    funded_at = models.DateTimeField(null=True, blank=True)
    assigned_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "created_at"], name="job_state_created"),
            models.Index(fields=["owner", "state"], name="job_owner_state"),
            models.Index(fields=["provider", "state"], name="job_provider_state"),
            models.Index(fields=["deposit", "state"], name="job_deposit_state"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(max_price__gt=0), name="job_max_price_positive"),
            models.CheckConstraint(
                condition=Q(charge__isnull=True) | Q(charge__lte=models.F("max_price")), name="job_charge_within_max"
            ),
        ]

    def __str__(self) -> str:
        return self.id


class JobAttempt(models.Model):
    """One provider's try at a job. A provider gets at most one try per job."""

    ASSIGNED, RUNNING, COMPLETED, FAILED, CANCELLED = "assigned", "running", "completed", "failed", "cancelled"
    STATES = [(s, s) for s in (ASSIGNED, RUNNING, COMPLETED, FAILED, CANCELLED)]

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempt_set")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="attempts")
    number = models.IntegerField()
    state = models.CharField(max_length=10, choices=STATES, default=ASSIGNED)
    reason = models.CharField(max_length=300, blank=True, default="")
    assigned_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "provider"], name="attempt_unique_job_provider")]


class JobEvent(models.Model):
    """A job's history: each state it entered, when and why."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    state = models.CharField(max_length=16)
    reason = models.CharField(max_length=300, blank=True, default="")
    provider = models.CharField(max_length=64, blank=True, default="")
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]


class CoordinatorAccount(models.Model):
    """The next nonce of an address the coordinator signs for: nonce order is the coordinator's."""

    address = models.CharField(max_length=64, primary_key=True)
    next_nonce = models.BigIntegerField(default=0)


class OutboxCursor(models.Model):
    """The last block the outbox has read: transactions are found final by reading blocks."""

    singleton = models.PositiveSmallIntegerField(primary_key=True, default=1)
    height = models.BigIntegerField(default=0)


class OutboxTx(models.Model):
    """A transaction the coordinator owes the chain, tracked until it is final.

    The coordinator's own (pays, refunds) get a nonce here at creation and are signed
    when first sent; a client's signed escrow_lock is stored as given. One row per
    (job, purpose) and (deposit, purpose): a job can never be paid or refunded twice.
    """

    QUEUED, SUBMITTED, COMMITTED, REJECTED, FAILED = "queued", "submitted", "committed", "rejected", "failed"
    STATUSES = [(s, s) for s in (QUEUED, SUBMITTED, COMMITTED, REJECTED, FAILED)]
    FINAL = (COMMITTED, REJECTED, FAILED)

    JOB_LOCK, JOB_PAY, JOB_REFUND = "job_lock", "job_pay", "job_refund"
    DEPOSIT_LOCK, DEPOSIT_PAYOUT, DEPOSIT_REFUND = "deposit_lock", "deposit_payout", "deposit_refund"
    NONCE_FILL = "nonce_fill"
    PURPOSES = [
        (p, p) for p in (JOB_LOCK, JOB_PAY, JOB_REFUND, DEPOSIT_LOCK, DEPOSIT_PAYOUT, DEPOSIT_REFUND, NONCE_FILL)
    ]

    purpose = models.CharField(max_length=16, choices=PURPOSES)
    kind = models.CharField(max_length=16, help_text="transaction type")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.PROTECT, related_name="txs")
    deposit = models.ForeignKey(Deposit, null=True, blank=True, on_delete=models.PROTECT, related_name="txs")
    payout = models.OneToOneField(DepositPayout, null=True, blank=True, on_delete=models.PROTECT, related_name="tx")
    sender = models.CharField(max_length=64)
    own = models.BooleanField(help_text="signed by the coordinator (nonce allocated here)")
    nonce = models.BigIntegerField()
    payload = models.JSONField()
    tx = models.JSONField(null=True, blank=True, help_text="the signed transaction")
    tx_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    status = models.CharField(max_length=10, choices=STATUSES, default=QUEUED)
    height = models.BigIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=32, blank=True, default="")
    error_message = models.CharField(max_length=300, blank=True, default="")
    attempts = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job", "purpose"], condition=Q(job__isnull=False), name="outbox_one_per_job_purpose"
            ),
            models.UniqueConstraint(
                fields=["deposit", "purpose"],
                condition=Q(deposit__isnull=False) & ~Q(purpose="deposit_payout"),
                name="outbox_one_per_deposit_purpose",
            ),
            # One escrow pays for one job or one deposit, never two.
            models.UniqueConstraint(
                fields=["tx_id"],
                condition=Q(purpose__in=["job_lock", "deposit_lock"]),
                name="outbox_one_lock_per_escrow",
            ),
            # A failed row gave its nonce up to a filler; any other holds it alone.
            models.UniqueConstraint(
                fields=["sender", "nonce"], condition=Q(own=True) & ~Q(status="failed"), name="outbox_one_per_nonce"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "own", "nonce"], name="outbox_status_nonce"),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} {self.tx_id or '(unsigned)'} {self.status}"


# The gateway's API keys live in their own module; importing it here registers them with this app.
from marketplace.gateway.models import ApiKey, GatewayJob  # noqa: E402, F401
