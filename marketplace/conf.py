"""The coordinator's tunables, read once from the environment (``aitbc_site.env`` helpers).

Callers read them as ``conf.NAME`` (never ``from conf import NAME``) so tests can
change one with ``monkeypatch.setattr(conf, "NAME", value)``. Durations are seconds.
"""

from __future__ import annotations

from aitbc_site.env import env_int, env_str

# A provider silent this long (no message, heartbeat or poll) is offline (docs/marketplace.md: 30 s).
OFFLINE_AFTER_S = env_int("AITBC_MARKET_OFFLINE_AFTER_S", 30, minimum=1)
# A provider must answer a pushed job with "accepted" or "rejected" this fast, or it loses the job.
ACCEPT_TIMEOUT_S = env_int("AITBC_MARKET_ACCEPT_TIMEOUT_S", 15, minimum=1)
# One run (from assignment to result) may take this long: the JOB's deadline_ms.
RUN_TIMEOUT_S = env_int("AITBC_MARKET_RUN_TIMEOUT_S", 120, minimum=1)
# A job not completed this long after submission expires and is refunded.
JOB_TTL_S = env_int("AITBC_MARKET_JOB_TTL_S", 300, minimum=10)
# Time kept between a job's expiry and its escrow's timeout for the pay and refund to commit.
SETTLE_MARGIN_S = env_int("AITBC_MARKET_SETTLE_MARGIN_S", 120, minimum=1)
# Providers tried for one job before it fails and is refunded.
MAX_ATTEMPTS = env_int("AITBC_MARKET_MAX_ATTEMPTS", 3, minimum=1)
# After a client cancels a running job, a result that arrives this soon is still paid (work done).
CANCEL_GRACE_S = env_int("AITBC_MARKET_CANCEL_GRACE_S", 10, minimum=0)
# A client may dispute a completed job this long after its completion.
DISPUTE_WINDOW_S = env_int("AITBC_MARKET_DISPUTE_WINDOW_S", 86400, minimum=0)
# The long poll holds a request this long (docs/marketplace.md: 25 s).
POLL_WAIT_S = env_int("AITBC_MARKET_POLL_WAIT_S", 25, minimum=1)
# Deposits pay their providers in batches: when this many jobs, or this many uait, are owed,
# or when the oldest owed charge is this old, whichever comes first.
PAYOUT_BATCH_COUNT = env_int("AITBC_MARKET_PAYOUT_BATCH_COUNT", 20, minimum=1)
PAYOUT_BATCH_AMOUNT = env_int("AITBC_MARKET_PAYOUT_BATCH_AMOUNT", 1_000_000, minimum=1)
PAYOUT_BATCH_AGE_S = env_int("AITBC_MARKET_PAYOUT_BATCH_AGE_S", 30, minimum=1)
# Rate of the public endpoints (DRF throttle syntax), per client address.
PUBLIC_RATE = env_str("AITBC_MARKET_PUBLIC_RATE", "600/min") or "600/min"
# Outbox: transactions submitted per batch call, and how many submitted ones are checked per run.
OUTBOX_BATCH = env_int("AITBC_MARKET_OUTBOX_BATCH", 500, minimum=1, maximum=5000)
OUTBOX_TRACK_LIMIT = env_int("AITBC_MARKET_OUTBOX_TRACK_LIMIT", 500, minimum=1)
# A sent transaction no block has shown this long is asked about directly (dropped or lost?).
TRACK_FALLBACK_S = env_int("AITBC_MARKET_TRACK_FALLBACK_S", 10, minimum=0)
# How long a cached node status (chain id, fee, height) is reused.
STATUS_MAX_AGE_S = 1.0
# With nothing in flight the outbox only moves its block cursor up, to a height read at most
# this long ago (usually read for other work, so an idle pass asks the node nothing). An older
# height costs the next busy pass a few more blocks in the same request.
OUTBOX_IDLE_STATUS_MAX_AGE_S = 30.0
