"""BFT consensus for one height, as a pure state machine (no I/O, no Django).

This is the algorithm of Buchman, Kwon and Milosevic, "The latest gossip on BFT
consensus" (Tendermint, arXiv:1807.04938), Algorithm 1, for one height:
propose, prevote and precommit steps in rounds; a block is decided once
validators with more than 2/3 of the voting power precommit it in one round,
and those precommits are its commit. A validator locks on a block it saw
more than 2/3 prevotes for and precommits no other block at that height unless
a later round's proposal carries a proof of lock change (2/3+ prevotes in a
round at or after its lock). Safety holds while faulty validators hold less
than 1/3 of the power; liveness once messages arrive within the timeouts.

The host (``chain/network.py``) feeds it proposals, votes and timeouts and
carries out what it returns: messages to broadcast, timeouts to schedule, a
decision to apply, and evidence of double signing. Signing goes through the
host's signer, which records (height, round, step) durably before it signs,
so a restarted validator never signs two different things for one step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chain.protocol.block import verify_vote, vote_body
from chain.protocol.encoding import canonical_json, is_hex, is_int
from chain.protocol.keys import domain_tag, verify

DOMAIN_PROPOSAL = domain_tag("proposal")
PREVOTE, PRECOMMIT = "prevote", "precommit"
PROPOSE_STEP, PREVOTE_STEP, PRECOMMIT_STEP = 0, 1, 2
NIL = ""


class ValidatorSet:
    """Validators with voting power; quorum is more than 2/3 of the power."""

    def __init__(self, validators: dict[str, tuple[str, int]]) -> None:
        if not validators:
            raise ValueError("a validator set needs at least one validator")
        self.validators = dict(validators)
        self.total = sum(power for _pub, power in self.validators.values())
        # Weighted round-robin: each validator appears once per unit of power, in address order.
        self._rotation = [addr for addr in sorted(self.validators) for _ in range(self.validators[addr][1])]

    def power(self, address: str) -> int:
        entry = self.validators.get(address)
        return entry[1] if entry else 0

    def pubkey(self, address: str) -> str | None:
        entry = self.validators.get(address)
        return entry[0] if entry else None

    def has_quorum(self, power: int) -> bool:
        return 3 * power > 2 * self.total

    def has_one_honest(self, power: int) -> bool:
        return 3 * power > self.total

    def proposer(self, height: int, round_: int) -> str:
        return self._rotation[(height + round_) % len(self._rotation)]


@dataclass(frozen=True, slots=True)
class Vote:
    height: int
    round: int
    step: str
    block_id: str
    validator: str
    signature: str

    def body(self, chain_id: str) -> dict[str, Any]:
        return vote_body(
            chain_id=chain_id, height=self.height, round=self.round, step=self.step, block_id=self.block_id or None
        )

    def message(self, chain_id: str) -> dict[str, Any]:
        return {"type": "vote", "vote": self.body(chain_id), "validator": self.validator, "signature": self.signature}

    @classmethod
    def from_message(cls, message: dict[str, Any], chain_id: str) -> Vote:
        body = message.get("vote")
        if not isinstance(body, dict) or body.get("chain_id") != chain_id:
            raise ValueError("vote for another chain or malformed")
        if set(body) != {"chain_id", "height", "round", "type", "block_id"}:
            raise ValueError("vote body has the wrong fields")
        if not is_int(body["height"]) or not is_int(body["round"]) or body["type"] not in (PREVOTE, PRECOMMIT):
            raise ValueError("vote height, round or type malformed")
        if body["block_id"] != NIL and not is_hex(body["block_id"], 32):
            raise ValueError("vote block_id malformed")
        if type(message.get("validator")) is not str or not is_hex(message.get("signature"), 64):
            raise ValueError("vote validator or signature malformed")
        return cls(
            body["height"], body["round"], body["type"], body["block_id"], message["validator"], message["signature"]
        )


def proposal_body(*, chain_id: str, height: int, round_: int, pol_round: int | None, block_id: str) -> dict[str, Any]:
    return {"chain_id": chain_id, "height": height, "round": round_, "pol_round": pol_round, "block_id": block_id}


@dataclass(frozen=True, slots=True)
class Proposal:
    height: int
    round: int
    pol_round: int | None
    block_id: str
    block: dict[str, Any]
    proposer: str
    signature: str

    def body(self, chain_id: str) -> dict[str, Any]:
        return proposal_body(
            chain_id=chain_id, height=self.height, round_=self.round, pol_round=self.pol_round, block_id=self.block_id
        )

    def message(self, chain_id: str) -> dict[str, Any]:
        return {
            "type": "proposal",
            "proposal": self.body(chain_id),
            "block": self.block,
            "proposer": self.proposer,
            "signature": self.signature,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any], chain_id: str) -> Proposal:
        body = message.get("proposal")
        if not isinstance(body, dict) or body.get("chain_id") != chain_id:
            raise ValueError("proposal for another chain or malformed")
        if set(body) != {"chain_id", "height", "round", "pol_round", "block_id"}:
            raise ValueError("proposal body has the wrong fields")
        pol = body["pol_round"]
        if not is_int(body["height"]) or not is_int(body["round"]) or not (pol is None or is_int(pol)):
            raise ValueError("proposal height, round or pol_round malformed")
        if pol is not None and pol >= body["round"]:
            raise ValueError("proposal pol_round must be below its round")
        if not is_hex(body["block_id"], 32) or not isinstance(message.get("block"), dict):
            raise ValueError("proposal block malformed")
        if type(message.get("proposer")) is not str or not is_hex(message.get("signature"), 64):
            raise ValueError("proposal proposer or signature malformed")
        return cls(
            body["height"],
            body["round"],
            pol,
            body["block_id"],
            message["block"],
            message["proposer"],
            message["signature"],
        )


class Signer(Protocol):
    """The validator's key, guarded: it refuses to sign twice for one (height, round, step)."""

    address: str

    def sign_vote(self, chain_id: str, height: int, round_: int, step: str, block_id: str) -> str | None: ...

    def sign_proposal(
        self, chain_id: str, height: int, round_: int, pol_round: int | None, block_id: str
    ) -> str | None: ...


# What the state machine asks its host to do.
@dataclass(frozen=True, slots=True)
class Broadcast:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    step: int
    height: int
    round: int
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Decide:
    height: int
    round: int
    block_id: str
    block: dict[str, Any]
    commit: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """Two conflicting signed votes from one validator: evidence of double signing."""

    first: Vote
    second: Vote


Output = Broadcast | ScheduleTimeout | Decide | Misbehaviour


@dataclass
class Timeouts:
    propose_ms: int = 1000
    prevote_ms: int = 500
    precommit_ms: int = 500
    delta_ms: int = 500  # added per round, so rounds lengthen until messages arrive in time

    def for_step(self, step: int, round_: int) -> int:
        base = {PROPOSE_STEP: self.propose_ms, PREVOTE_STEP: self.prevote_ms, PRECOMMIT_STEP: self.precommit_ms}[step]
        return base + self.delta_ms * round_


@dataclass
class _RoundVotes:
    votes: dict[str, Vote] = field(default_factory=dict)
    power_for: dict[str, int] = field(default_factory=dict)
    power_any: int = 0


class HeightState:
    """Consensus on one height. Feed it messages; do what it returns."""

    def __init__(
        self,
        *,
        chain_id: str,
        height: int,
        validators: ValidatorSet,
        signer: Signer | None,
        propose: Callable[[int, int], tuple[str, dict[str, Any]]],
        validate: Callable[[dict[str, Any]], str | None],
        timeouts: Timeouts | None = None,
        locked: tuple[int, str, dict[str, Any] | None] | None = None,
    ) -> None:
        """``propose(height, round)`` builds a new block (its id and body); ``validate(block)``
        returns the block's id when it is a valid next block, else None. ``locked`` restores a
        lock (round, block id, block) persisted before a restart; the block may be None (only
        its id is kept), and then this validator, proposing while locked, proposes a new block."""
        self.chain_id = chain_id
        self.height = height
        self.validators = validators
        self.signer = signer
        self.me = signer.address if signer is not None and validators.power(signer.address) > 0 else None
        self.propose_value = propose
        self.validate = validate
        self.timeouts = timeouts or Timeouts()
        self.round = 0
        self.step = PROPOSE_STEP
        self.locked_round, self.locked_id, self.locked_block = (-1, None, None)
        if locked is not None:
            self.locked_round, self.locked_id, self.locked_block = locked
        self.valid_round: int = self.locked_round
        self.valid_id: str | None = self.locked_id
        self.valid_block: dict[str, Any] | None = self.locked_block
        self.proposals: dict[int, Proposal] = {}
        self.blocks: dict[str, dict[str, Any]] = {}
        self.valid_cache: dict[str, bool] = {}
        self.votes: dict[tuple[int, str], _RoundVotes] = {}
        self.round_senders: dict[int, dict[str, int]] = {}
        self.decided: Decide | None = None
        self._once: set[tuple] = set()
        # Signed messages of this height whose signature verified: the host checks a message
        # before it is believed at all, and relays bring the same message again.
        self._verified: set[Vote | tuple] = set()
        self.started = False

    # -- inputs -------------------------------------------------------------------------------

    def start(self) -> list[Output]:
        self.started = True
        out: list[Output] = []
        self._start_round(0, out)
        return out

    def receive_proposal(self, proposal: Proposal) -> list[Output]:
        out: list[Output] = []
        if proposal.height != self.height or self.decided is not None:
            return out
        if proposal.proposer != self.validators.proposer(proposal.height, proposal.round):
            return out
        if proposal.round in self.proposals:
            return out
        pubkey = self.validators.pubkey(proposal.proposer)
        if pubkey is None:
            return out
        if not self.proposal_verified(proposal):
            body = canonical_json(proposal.body(self.chain_id))
            if not verify(bytes.fromhex(pubkey), DOMAIN_PROPOSAL + body, bytes.fromhex(proposal.signature)):
                return out
        self.proposals[proposal.round] = proposal
        self.blocks.setdefault(proposal.block_id, proposal.block)
        self._note_sender(proposal.round, proposal.proposer, out)
        self._evaluate(out)
        return out

    def receive_vote(self, vote: Vote) -> list[Output]:
        out: list[Output] = []
        if vote.height != self.height or vote.step not in (PREVOTE, PRECOMMIT):
            return out
        power = self.validators.power(vote.validator)
        pubkey = self.validators.pubkey(vote.validator)
        if power == 0 or pubkey is None:
            return out
        if not self._record(vote, pubkey, power, out):
            return out
        self._note_sender(vote.round, vote.validator, out)
        if self.decided is None:
            self._evaluate(out)
        return out

    def _record(self, vote: Vote, pubkey: str, power: int, out: list[Output]) -> bool:
        """Count a vote once; a second, different vote from the same validator is misbehaviour."""
        tally = self.votes.setdefault((vote.round, vote.step), _RoundVotes())
        previous = tally.votes.get(vote.validator)
        if previous is not None:
            if previous.block_id != vote.block_id and self._vote_valid(vote, pubkey):
                out.append(Misbehaviour(previous, vote))
            return False
        if not self._vote_valid(vote, pubkey):
            return False
        tally.votes[vote.validator] = vote
        tally.power_for[vote.block_id] = tally.power_for.get(vote.block_id, 0) + power
        tally.power_any += power
        return True

    def _vote_valid(self, vote: Vote, pubkey: str) -> bool:
        return vote in self._verified or verify_vote(pubkey, vote.body(self.chain_id), vote.signature)

    # -- what the host knows of a message before it hands it over --------------------------------

    def has(self, item: Proposal | Vote) -> bool:
        """Whether exactly this signed proposal or vote is already counted at this height."""
        if isinstance(item, Vote):
            tally = self.votes.get((item.round, item.step))
            return tally is not None and tally.votes.get(item.validator) == item
        known = self.proposals.get(item.round)
        return known is not None and _proposal_key(known) == _proposal_key(item)

    def note_verified(self, item: Proposal | Vote) -> None:
        """The host checked this message's signature against its author's key at this height."""
        self._verified.add(item if isinstance(item, Vote) else _proposal_key(item))

    def vote_verified(self, vote: Vote) -> bool:
        return vote in self._verified

    def proposal_verified(self, proposal: Proposal) -> bool:
        return _proposal_key(proposal) in self._verified

    def retransmit(self) -> list[Output]:
        """This validator's own proposal and votes of the current round (and the one before).

        Gossip is unreliable, and a validator stuck waiting in a step (a partition, lost
        messages) sends nothing new, so the host re-sends these periodically: a healed
        network then sees the later rounds and catches up (the round-skip rule).
        """
        out: list[Output] = []
        if self.me is None:
            return out
        for round_ in (self.round - 1, self.round):
            proposal = self.proposals.get(round_)
            if proposal is not None and proposal.proposer == self.me:
                out.append(Broadcast(proposal.message(self.chain_id)))
            for step in (PREVOTE, PRECOMMIT):
                tally = self.votes.get((round_, step))
                vote = tally.votes.get(self.me) if tally else None
                if vote is not None:
                    out.append(Broadcast(vote.message(self.chain_id)))
        return out

    def on_timeout(self, step: int, height: int, round_: int) -> list[Output]:
        out: list[Output] = []
        if height != self.height or round_ != self.round or self.decided is not None:
            return out
        if step == PROPOSE_STEP and self.step == PROPOSE_STEP:
            self._vote(PREVOTE, NIL, out)
            self.step = PREVOTE_STEP
        elif step == PREVOTE_STEP and self.step == PREVOTE_STEP:
            self._vote(PRECOMMIT, NIL, out)
            self.step = PRECOMMIT_STEP
        elif step == PRECOMMIT_STEP:
            self._start_round(self.round + 1, out)
            return out
        self._evaluate(out)
        return out

    # -- the algorithm ----------------------------------------------------------------------

    def _start_round(self, round_: int, out: list[Output]) -> None:
        self.round = round_
        self.step = PROPOSE_STEP
        proposer = self.validators.proposer(self.height, round_)
        if self.me is not None and proposer == self.me:
            if self.valid_id is not None and self.valid_block is not None:
                block_id, block, pol = self.valid_id, self.valid_block, self.valid_round
            else:
                block_id, block = self.propose_value(self.height, round_)
                pol = -1
            pol_round = pol if pol >= 0 else None
            assert self.signer is not None
            signature = self.signer.sign_proposal(self.chain_id, self.height, round_, pol_round, block_id)
            if signature is not None:
                proposal = Proposal(self.height, round_, pol_round, block_id, block, self.me, signature)
                out.append(Broadcast(proposal.message(self.chain_id)))
                self.proposals.setdefault(round_, proposal)
                self.blocks.setdefault(block_id, block)
        else:
            out.append(ScheduleTimeout(PROPOSE_STEP, self.height, round_, self.timeouts.for_step(PROPOSE_STEP, round_)))
        self._evaluate(out)

    def _evaluate(self, out: list[Output]) -> None:
        """Apply every rule whose condition holds; repeat until none fires."""
        while self.decided is None and self._step_once(out):
            pass

    def _step_once(self, out: list[Output]) -> bool:
        h, r = self.height, self.round
        proposal = self.proposals.get(r)
        # Lines 22-27: a fresh proposal in the propose step.
        if proposal is not None and self.step == PROPOSE_STEP and proposal.pol_round is None:
            ok = self._valid(proposal) and (self.locked_round == -1 or self.locked_id == proposal.block_id)
            self._vote(PREVOTE, proposal.block_id if ok else NIL, out)
            self.step = PREVOTE_STEP
            return True
        # Lines 28-33: a re-proposal with a proof of lock change from round pol_round.
        if (
            proposal is not None
            and self.step == PROPOSE_STEP
            and proposal.pol_round is not None
            and proposal.pol_round < r
            and self._quorum(proposal.pol_round, PREVOTE, proposal.block_id)
        ):
            ok = self._valid(proposal) and (
                self.locked_round <= proposal.pol_round or self.locked_id == proposal.block_id
            )
            self._vote(PREVOTE, proposal.block_id if ok else NIL, out)
            self.step = PREVOTE_STEP
            return True
        # Lines 34-35: 2/3+ prevotes of any kind: start the prevote timeout once.
        if self.step == PREVOTE_STEP and self._quorum_any(r, PREVOTE) and self._first(("prevote-timeout", r)):
            out.append(ScheduleTimeout(PREVOTE_STEP, h, r, self.timeouts.for_step(PREVOTE_STEP, r)))
            return True
        # Lines 36-43: 2/3+ prevotes for this round's proposal: lock and precommit it.
        if (
            proposal is not None
            and self.step >= PREVOTE_STEP
            and self._quorum(r, PREVOTE, proposal.block_id)
            and self._valid(proposal)
            and self._first(("lock", r))
        ):
            if self.step == PREVOTE_STEP:
                self.locked_round, self.locked_id, self.locked_block = r, proposal.block_id, proposal.block
                self._vote(PRECOMMIT, proposal.block_id, out)
                self.step = PRECOMMIT_STEP
            self.valid_round, self.valid_id, self.valid_block = r, proposal.block_id, proposal.block
            return True
        # Lines 44-46: 2/3+ prevotes for nil: precommit nil.
        if self.step == PREVOTE_STEP and self._quorum(r, PREVOTE, NIL):
            self._vote(PRECOMMIT, NIL, out)
            self.step = PRECOMMIT_STEP
            return True
        # Lines 47-48: 2/3+ precommits of any kind: start the precommit timeout once.
        if self._quorum_any(r, PRECOMMIT) and self._first(("precommit-timeout", r)):
            out.append(ScheduleTimeout(PRECOMMIT_STEP, h, r, self.timeouts.for_step(PRECOMMIT_STEP, r)))
            return True
        # Lines 49-54: 2/3+ precommits for a block in any round, with its proposal: decide.
        for (vote_round, step), tally in self.votes.items():
            if step != PRECOMMIT:
                continue
            for block_id, power in tally.power_for.items():
                if block_id == NIL or not self.validators.has_quorum(power):
                    continue
                block = self.blocks.get(block_id)
                if block is None or not self._valid_block(block_id, block):
                    continue
                signatures = [
                    {"validator": v.validator, "signature": v.signature}
                    for v in sorted(tally.votes.values(), key=lambda v: v.validator)
                    if v.block_id == block_id
                ]
                commit = {"height": h, "round": vote_round, "block_id": block_id, "signatures": signatures}
                self.decided = Decide(h, vote_round, block_id, block, commit)
                out.append(self.decided)
                return False
        return False

    def _note_sender(self, round_: int, sender: str, out: list[Output]) -> None:
        """Lines 55-56: f+1 validators already in a later round: skip to it."""
        senders = self.round_senders.setdefault(round_, {})
        senders[sender] = self.validators.power(sender)
        if round_ > self.round and self.validators.has_one_honest(sum(senders.values())) and self.decided is None:
            self._start_round(round_, out)

    def _vote(self, step: str, block_id: str, out: list[Output]) -> None:
        if self.me is None or self.signer is None:
            return
        signature = self.signer.sign_vote(self.chain_id, self.height, self.round, step, block_id)
        if signature is None:
            return
        vote = Vote(self.height, self.round, step, block_id, self.me, signature)
        out.append(Broadcast(vote.message(self.chain_id)))
        self._verified.add(vote)  # signed here a moment ago, by the key the set names
        # Counted here without re-evaluating: the caller's evaluation loop picks it up.
        self._record(vote, self.validators.pubkey(self.me) or "", self.validators.power(self.me), out)

    def _valid(self, proposal: Proposal) -> bool:
        return self._valid_block(proposal.block_id, proposal.block)

    def _valid_block(self, block_id: str, block: dict[str, Any]) -> bool:
        if block_id not in self.valid_cache:
            self.valid_cache[block_id] = self.validate(block) == block_id
        return self.valid_cache[block_id]

    def _quorum(self, round_: int, step: str, block_id: str) -> bool:
        tally = self.votes.get((round_, step))
        return tally is not None and self.validators.has_quorum(tally.power_for.get(block_id, 0))

    def _quorum_any(self, round_: int, step: str) -> bool:
        tally = self.votes.get((round_, step))
        return tally is not None and self.validators.has_quorum(tally.power_any)

    def _first(self, key: tuple) -> bool:
        if key in self._once:
            return False
        self._once.add(key)
        return True


def _proposal_key(proposal: Proposal) -> tuple:
    return (
        "proposal",
        proposal.height,
        proposal.round,
        proposal.pol_round,
        proposal.block_id,
        proposal.proposer,
        proposal.signature,
    )


def verify_proposal_signature(pubkey_hex: str, body: dict[str, Any], signature_hex: str) -> bool:
    return is_hex(signature_hex, 64) and verify(
        bytes.fromhex(pubkey_hex), DOMAIN_PROPOSAL + canonical_json(body), bytes.fromhex(signature_hex)
    )
