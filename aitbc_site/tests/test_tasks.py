"""Celery tasks run by a real worker: a worker process on Redis, and the embedded worker thread."""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from asgiref.sync import async_to_sync
from celery import Celery
from channels_redis.core import RedisChannelLayer

from aitbc_site.embedded import EmbeddedCelery
from aitbc_site.events import user_group
from conftest import Spawned, clean_env, redis_url_with_db, wait_until

# Celery's broker and results use their own Redis database, beside the channel layer's.
CELERY_REDIS_DB = 13
RESULT_TIMEOUT = 60


@dataclass
class RedisWorker:
    process: Spawned
    broker_url: str
    queue: str
    channel_prefix: str
    client: Celery

    def run(self, task: str, *args: object) -> object:
        """Send ``task`` to this worker's queue and return its result."""
        result = self.client.send_task(task, args=args, queue=self.queue)

        def done() -> bool:
            self.process.assert_running()
            return result.ready()

        wait_until(done, timeout=RESULT_TIMEOUT, interval=0.05, message=f"{task} to finish on queue {self.queue}")
        # The result is already in; an embedded worker started earlier in this process
        # would otherwise make get() refuse, as if the test were a task.
        value = result.get(timeout=1, disable_sync_subtasks=False)
        result.forget()
        return value


@pytest.fixture
def redis_worker(
    redis_url: str, spawn: Callable[..., Spawned], tmp_path: Path, unique_name: Callable[[str], str]
) -> Iterator[RedisWorker]:
    """``celery -A aitbc_site worker`` as a process on the Redis broker, consuming a queue of its own."""
    broker_url = redis_url_with_db(redis_url, CELERY_REDIS_DB)
    queue = unique_name("test-queue")
    channel_prefix = unique_name("test-channels")
    process = spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "aitbc_site",
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--hostname",
            f"{queue}@localhost",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        env=clean_env(REDIS_URL=broker_url, AITBC_DATA_DIR=tmp_path / "data", AITBC_CHANNEL_PREFIX=channel_prefix),
        name="celery-worker",
    )
    client = Celery("aitbc-test-client", broker=broker_url, backend=broker_url, set_as_current=False)
    client.conf.broker_connection_retry_on_startup = False
    try:
        yield RedisWorker(process, broker_url, queue, channel_prefix, client)
    finally:
        client.close()
        connection = redis.Redis.from_url(broker_url)
        # The queue's list and kombu's bindings for it; the name is this test's alone.
        leftovers = list(connection.scan_iter(match=f"*{queue}*"))
        if leftovers:
            connection.delete(*leftovers)
        connection.close()


@pytest.mark.process
@pytest.mark.redis
def test_worker_process_runs_a_task_from_the_redis_broker(redis_worker: RedisWorker) -> None:
    payload = {"nonce": uuid.uuid4().hex, "items": [1, 2, 3]}

    result = redis_worker.run("aitbc_site.echo", payload)

    assert result == {"value": payload, "hostname": f"{redis_worker.queue}@localhost", "pid": redis_worker.process.pid}
    assert result["pid"] != os.getpid()


@pytest.mark.process
@pytest.mark.redis
def test_ping_task_in_a_worker_process_reaches_the_users_group(redis_worker: RedisWorker) -> None:
    user_id, token = 4242, uuid.uuid4().hex
    # The worker's channel layer: its REDIS_URL, its prefix.
    layer = RedisChannelLayer(hosts=[redis_worker.broker_url], prefix=redis_worker.channel_prefix)

    async def subscribe() -> str:
        channel = await layer.new_channel()
        await layer.group_add(user_group(user_id), channel)
        return channel

    async def next_message(channel: str) -> dict:
        try:
            return await layer.receive(channel)
        finally:
            await layer.flush()
            await layer.close_pools()

    channel = async_to_sync(subscribe)()
    result = redis_worker.run("aitbc_site.ping", user_id, token, 0.0)

    assert result["token"] == token
    assert async_to_sync(next_message)(channel) == {"type": "event.message", "event": result}


def test_embedded_worker_runs_a_task_in_a_thread_of_this_process(memory_app: Celery) -> None:
    @memory_app.task(name="test.where", shared=False)
    def where(value: int) -> dict:
        return {"value": value * 2, "pid": os.getpid(), "thread": threading.current_thread().name}

    worker = EmbeddedCelery(memory_app, concurrency=2, beat=False, hostname=f"{uuid.uuid4().hex}@embedded")
    worker.start()
    try:
        assert worker.is_alive()
        pending = where.delay(21)
        wait_until(pending.ready, timeout=RESULT_TIMEOUT, interval=0.01, message="the task to finish")
        # A started worker marks this process as one whose joins would block (a task
        # must not wait for another); the test is not a task.
        result = pending.get(timeout=1, disable_sync_subtasks=False)
    finally:
        worker.stop()

    assert result["value"] == 42
    assert result["pid"] == os.getpid()
    assert result["thread"] != threading.current_thread().name
    assert not worker.is_alive()


def test_embedded_beat_runs_the_apps_configured_scheduler(
    memory_app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticked = threading.Event()

    @memory_app.task(name="test.tick", shared=False)
    def tick() -> None:
        ticked.set()

    memory_app.conf.beat_schedule = {"tick": {"task": "test.tick", "schedule": 0.2}}
    # A scheduler that keeps nothing on disk: the file-backed default would leave a
    # celerybeat-schedule file in the working directory.
    memory_app.conf.beat_scheduler = "celery.beat:Scheduler"
    monkeypatch.chdir(tmp_path)

    worker = EmbeddedCelery(memory_app, concurrency=1, beat=True, hostname=f"{uuid.uuid4().hex}@embedded")
    worker.start()
    try:
        assert ticked.wait(RESULT_TIMEOUT), "beat did not send its scheduled task to the worker"
        scheduler = wait_until(lambda: worker.beat.service.__dict__.get("scheduler"), message="beat's scheduler")
    finally:
        worker.stop()

    assert type(scheduler).__module__ + ":" + type(scheduler).__name__ == "celery.beat:Scheduler"
    assert list(tmp_path.iterdir()) == []
