"""The embedded broker: kombu's in-memory queues, whose consumers wait for a put instead of polling."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from kombu import Connection, Exchange, Queue

from aitbc_site import embedded

WAIT_S = 60
# Long enough that a consumer relying on its polling would not see the message in this test.
POLL_S = 3600


def memory_connection() -> Connection:
    return Connection("memory://", transport=embedded.MemoryTransport, transport_options={"polling_interval": POLL_S})


def test_a_waiting_consumer_wakes_when_a_message_is_put(
    monkeypatch: pytest.MonkeyPatch, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("wake")
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    waiting = threading.Event()
    wait_past = embedded._arrivals.wait_past

    def announce_and_wait(seen: int, timeout: float) -> None:
        waiting.set()
        wait_past(seen, timeout)

    monkeypatch.setattr(embedded._arrivals, "wait_past", announce_and_wait)
    received: list[dict] = []
    with memory_connection() as consumer_connection, memory_connection() as producer_connection:

        def on_message(body: dict, message) -> None:
            received.append(body)
            message.ack()

        with consumer_connection.Consumer(queue, callbacks=[on_message]):
            drain = threading.Thread(target=consumer_connection.drain_events, kwargs={"timeout": POLL_S}, daemon=True)
            drain.start()
            assert waiting.wait(WAIT_S), "the consumer never waited"
            producer_connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue])
            drain.join(WAIT_S)
            assert not drain.is_alive(), "the consumer slept through the put"
    assert received == [{"n": 1}]


def test_draining_an_empty_queue_times_out(unique_name: Callable[[str], str]) -> None:
    name = unique_name("empty")
    with memory_connection() as connection, connection.Consumer(Queue(name), callbacks=[lambda body, message: None]):
        # Leaving the block must not wait for the consumer: the pytest.raises sits inside.
        try:
            connection.drain_events(timeout=0.05)
        except TimeoutError:
            return
    pytest.fail("drain_events returned without a message")
