"""Input and output shapes of the marketplace API (also what the OpenAPI schema shows)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from chain.protocol.encoding import MAX_INT

# The one error shape of the API ({"error": {"code", "message"}}), one schema component.
from wallet.api import ErrorDetailSerializer, ErrorSerializer  # noqa: F401

MAX_PROMPT_CHARS = 200_000
MAX_MESSAGES = 200
MAX_TOKENS = 32_768
ROLES = ("system", "user", "assistant")


def check_text(value: str, what: str) -> str:
    """Text that travels to providers and into receipts: valid UTF-8 (no lone surrogates), no NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise serializers.ValidationError(f"{what} is not valid Unicode (a lone surrogate)") from None
    if "\x00" in value:
        raise serializers.ValidationError(f"{what} contains a NUL character")
    return value


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: no strings, floats or booleans (protocol.md's integers)."""

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


class TemperatureField(serializers.FloatField):
    """A JSON number in [0, 2]; it travels to providers in thousandths (``temperature_milli``)."""

    def to_internal_value(self, data: Any) -> float:
        if type(data) not in (int, float):
            self.fail("invalid")
        return super().to_internal_value(data)


# -- jobs --------------------------------------------------------------------------------------


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=MAX_PROMPT_CHARS)


class PaymentInput(serializers.Serializer):
    escrow_tx = serializers.JSONField(
        required=False, help_text="your signed escrow_lock (arbiter: the coordinator), not yet submitted"
    )
    wallet = serializers.CharField(required=False, max_length=100, help_text="address of one of your stored wallets")
    password = serializers.CharField(
        required=False, write_only=True, trim_whitespace=False, max_length=1024, style={"input_type": "password"}
    )
    deposit = serializers.CharField(required=False, max_length=40, help_text="id of one of your open deposits")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        ways = [name for name in ("escrow_tx", "wallet", "deposit") if name in attrs]
        if len(ways) != 1:
            raise serializers.ValidationError("give exactly one of escrow_tx, wallet (with password) or deposit")
        if ("password" in attrs) != ("wallet" in attrs):
            raise serializers.ValidationError("password goes with wallet, and wallet needs it")
        if "escrow_tx" in attrs and not isinstance(attrs["escrow_tx"], dict):
            raise serializers.ValidationError("escrow_tx is a signed transaction (a JSON object)")
        return attrs


class JobCreateInput(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    prompt = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, max_length=MAX_PROMPT_CHARS, help_text="or messages"
    )
    messages = MessageSerializer(many=True, required=False, max_length=MAX_MESSAGES, help_text="or prompt")
    max_tokens = StrictIntegerField(min_value=1, max_value=MAX_TOKENS)
    max_price = StrictIntegerField(
        min_value=1, max_value=MAX_INT, help_text="uait; the most this job may cost (its escrow must hold it)"
    )
    temperature = TemperatureField(required=False, min_value=0.0, max_value=2.0, help_text="default 0")
    seed = StrictIntegerField(required=False, min_value=0, max_value=MAX_INT)
    stop = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False, max_length=100), required=False, max_length=8
    )
    payment = PaymentInput()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("prompt" in attrs) == ("messages" in attrs):
            raise serializers.ValidationError("give exactly one of prompt and messages")
        if "messages" in attrs and not attrs["messages"]:
            raise serializers.ValidationError("messages must not be empty")
        texts = [attrs["prompt"]] if "prompt" in attrs else [m["content"] for m in attrs["messages"]]
        if sum(len(text) for text in texts) > MAX_PROMPT_CHARS:
            raise serializers.ValidationError(f"the input is longer than {MAX_PROMPT_CHARS} characters")
        for text in [*texts, *attrs.get("stop", []), attrs["model"]]:
            check_text(text, "the input")
        attrs["messages" if "messages" in attrs else "prompt"] = (
            [{"role": m["role"], "content": m["content"]} for m in attrs["messages"]]
            if "messages" in attrs
            else attrs["prompt"]
        )
        return attrs


class JobEventSerializer(serializers.Serializer):
    state = serializers.CharField()
    reason = serializers.CharField()
    provider = serializers.CharField()
    at = serializers.DateTimeField()


class JobSummarySerializer(serializers.Serializer):
    id = serializers.CharField()
    state = serializers.CharField(help_text="submitted, funded, assigned, running, completed, settled, ...")
    reason = serializers.CharField()
    model = serializers.CharField()
    max_price = serializers.IntegerField()
    payment = serializers.CharField(help_text="escrow, wallet or deposit")
    provider = serializers.CharField(allow_null=True)
    charge = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()


class JobDetailSerializer(JobSummarySerializer):
    input = serializers.JSONField()
    options = serializers.JSONField()
    input_tokens_estimate = serializers.IntegerField()
    payer = serializers.CharField()
    escrow_id = serializers.CharField(allow_null=True)
    escrow_amount = serializers.IntegerField(allow_null=True)
    escrow_timeout_height = serializers.IntegerField(allow_null=True)
    deposit = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    output = serializers.CharField(allow_null=True, help_text="once completed")
    input_tokens = serializers.IntegerField(allow_null=True)
    output_tokens = serializers.IntegerField(allow_null=True)
    refund = serializers.IntegerField(allow_null=True)
    disputed_at = serializers.DateTimeField(allow_null=True)
    dispute_reason = serializers.CharField()
    funded_at = serializers.DateTimeField(allow_null=True)
    assigned_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    settled_at = serializers.DateTimeField(allow_null=True)
    refunded_at = serializers.DateTimeField(allow_null=True)
    events = JobEventSerializer(many=True)


class SubmittedJobSerializer(JobDetailSerializer):
    token = serializers.CharField(
        allow_null=True, help_text="anonymous submissions only: send it as X-AITBC-Job-Token (shown once)"
    )


class DisputeInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class CancelInput(serializers.Serializer):
    reason = serializers.CharField(max_length=300, required=False)


class SignedReceiptSerializer(serializers.Serializer):
    receipt = serializers.JSONField(help_text="docs/marketplace.md, Receipts")
    signature = serializers.CharField()


# -- providers and offers ----------------------------------------------------------------------


class OfferSerializer(serializers.Serializer):
    provider = serializers.CharField()
    provider_name = serializers.CharField()
    model = serializers.CharField()
    input_price = serializers.IntegerField(help_text="uait per 1,000 input tokens")
    output_price = serializers.IntegerField(help_text="uait per 1,000 output tokens")
    context_length = serializers.IntegerField()
    concurrency = serializers.IntegerField()
    active = serializers.IntegerField(help_text="jobs assigned or running now")
    online = serializers.BooleanField()


class ReputationSerializer(serializers.Serializer):
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    rejected = serializers.IntegerField()
    disputed = serializers.IntegerField()
    success_rate = serializers.FloatField()
    avg_latency_ms = serializers.IntegerField(allow_null=True)
    uptime = serializers.FloatField()


class ProviderOfferSerializer(serializers.Serializer):
    model = serializers.CharField()
    input_price = serializers.IntegerField()
    output_price = serializers.IntegerField()
    context_length = serializers.IntegerField()
    concurrency = serializers.IntegerField()
    active = serializers.IntegerField()


class ProviderSerializer(serializers.Serializer):
    address = serializers.CharField()
    name = serializers.CharField()
    url = serializers.CharField()
    online = serializers.BooleanField()
    last_seen_at = serializers.DateTimeField(allow_null=True)
    registered_at = serializers.DateTimeField()
    reputation = ReputationSerializer()
    offers = ProviderOfferSerializer(many=True)


class RegisterInput(serializers.Serializer):
    auth = serializers.JSONField(help_text='purpose "register" (docs/marketplace.md)')
    signature = serializers.CharField()
    name = serializers.CharField(max_length=100)
    url = serializers.CharField(max_length=300, allow_blank=True)
    offers = serializers.JSONField(help_text="[{model, input_price, output_price, context_length, concurrency}]")


class RegisteredSerializer(serializers.Serializer):
    provider = serializers.CharField()
    token = serializers.CharField(help_text="bearer token for the provider endpoints (shown once)")


class JobWireSerializer(serializers.Serializer):
    job = serializers.JSONField(help_text="the JOB of docs/marketplace.md")


class HeartbeatInput(serializers.Serializer):
    active = StrictIntegerField(min_value=0, max_value=MAX_INT)


class ProviderAckSerializer(serializers.Serializer):
    provider = serializers.CharField()


class ProviderEventAnswerSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    state = serializers.CharField(help_text="the job's state after the message")
    charge = serializers.IntegerField(required=False, help_text="results: the uait you will be paid")


class CoordinatorSerializer(serializers.Serializer):
    address = serializers.CharField(help_text="the arbiter of every escrow that pays for jobs")
    chain_id = serializers.CharField()
    node_url = serializers.CharField()
    min_escrow_blocks = serializers.IntegerField(
        help_text="an escrow must time out at least this many blocks past the current height"
    )
    min_fee = serializers.IntegerField()


# -- deposits ------------------------------------------------------------------------------------


class DepositCreateInput(serializers.Serializer):
    escrow_tx = serializers.JSONField(required=False, help_text="your signed escrow_lock (arbiter: the coordinator)")
    wallet = serializers.CharField(required=False, max_length=100)
    password = serializers.CharField(
        required=False, write_only=True, trim_whitespace=False, max_length=1024, style={"input_type": "password"}
    )
    amount = StrictIntegerField(required=False, min_value=1, max_value=MAX_INT, help_text="with wallet: uait")
    timeout_blocks = StrictIntegerField(
        required=False, min_value=1, max_value=10_000_000, help_text="with wallet: the escrow's lifetime in blocks"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("escrow_tx" in attrs) == ("wallet" in attrs):
            raise serializers.ValidationError("give exactly one of escrow_tx and wallet (with password and amount)")
        if "wallet" in attrs and ("password" not in attrs or "amount" not in attrs):
            raise serializers.ValidationError("wallet needs password and amount")
        if "escrow_tx" in attrs and not isinstance(attrs["escrow_tx"], dict):
            raise serializers.ValidationError("escrow_tx is a signed transaction (a JSON object)")
        return attrs


class DepositSerializer(serializers.Serializer):
    id = serializers.CharField()
    state = serializers.CharField(help_text="pending, open, closing, closed or failed")
    reason = serializers.CharField()
    payer = serializers.CharField()
    escrow_id = serializers.CharField()
    amount = serializers.IntegerField()
    timeout_height = serializers.IntegerField()
    reserved = serializers.IntegerField(help_text="max prices of the jobs in flight")
    charged = serializers.IntegerField(help_text="metered charges of completed jobs")
    paid = serializers.IntegerField(help_text="committed payouts: equals the escrow's paid on the chain")
    owed = serializers.IntegerField(help_text="charged but not yet paid out")
    available = serializers.IntegerField(help_text="what new jobs may still reserve")
    refunded = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    opened_at = serializers.DateTimeField(allow_null=True)
    closed_at = serializers.DateTimeField(allow_null=True)
