"""The coordinator's key on disk, its command, and the tasks kicked after commit."""

from __future__ import annotations

import io
import json
import stat
import threading

import pytest
from django.core.management import call_command

from aitbc_site.beat import declared_schedule
from marketplace import keys, tasks
from marketplace.models import Job
from wallet.keystore import decrypt_keystore


def test_the_key_is_created_once_with_private_files(market_env) -> None:
    key = keys.coordinator_key()
    keystore, password = keys.keystore_path(), keys.password_path()
    for path in (keystore, password):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decrypt_keystore(keystore.read_text(), password.read_text().strip()).address == key.address
    keys._cache.clear()
    assert keys.coordinator_key().address == key.address  # read back, not made anew


def test_two_first_uses_at_once_agree_on_one_key(market_env) -> None:
    addresses = []

    def first_use() -> None:
        addresses.append(keys._load_or_create(market_env).address)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(addresses)) == 1


def test_the_command_prints_the_address(market_env) -> None:
    out = io.StringIO()
    call_command("coordinator_key", stdout=out)
    address = out.getvalue().strip()
    assert address == keys.coordinator_address() and address.startswith("ait1")
    out = io.StringIO()
    call_command("coordinator_key", "--json", stdout=out)
    info = json.loads(out.getvalue())
    assert info["address"] == address and info["keystore"] == str(keys.keystore_path())


def test_beat_runs_the_safety_nets() -> None:
    schedule = declared_schedule()
    assert {name for name, _ in schedule.values()} >= {
        "marketplace.outbox_process",
        "marketplace.dispatch_pending",
        "marketplace.sweep",
    }


@pytest.mark.django_db
def test_work_is_enqueued_when_its_transaction_commits(market, kicked, django_capture_on_commit_callbacks) -> None:
    market.provider("p1")
    with django_capture_on_commit_callbacks(execute=True):
        job_id = market.submit().json()["id"]
    assert ("marketplace.outbox_process", ()) in kicked  # the escrow_lock to track
    kicked.clear()
    market.ledger.produce()
    with django_capture_on_commit_callbacks(execute=True):
        tasks.outbox_process()  # the lock committed: the job is funded
    assert Job.objects.get(pk=job_id).state == Job.FUNDED
    assert ("marketplace.dispatch_job", (job_id,)) in kicked  # no job waits for a beat tick
    assert tasks.dispatch_job(job_id) is not None
    assert Job.objects.get(pk=job_id).state == Job.ASSIGNED
    assert tasks.dispatch_pending() == 0
    assert set(tasks.run_sweep()) >= {"expired", "offline"}
