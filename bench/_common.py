"""Helpers shared by the benchmarks: statistics, processes, keys."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port_block(size: int = 20) -> int:
    """A base port P such that P..P+size are free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65000:
            continue
        ok = True
        for port in range(base, base + size):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def manage(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    handle.close()
    return process


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and every process it started, live or reaped.

    A node runs helper processes (its transaction check processes): their CPU is the node's.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, and the reaped children's
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # it exited meanwhile
    return total / ticks


def progress(items, total: int, what: str):
    """``items`` with a progress bar on a terminal (tqdm); plain iteration otherwise."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=what, unit="tx", leave=False)


def start_devnet(workdir: Path, args: list[str], env: dict[str, str], timeout: float = 300) -> tuple:
    """``manage.py devnet <args>`` with its data in ``workdir/data``: (process, network.json) once written.

    Output goes to ``workdir/devnet.log``; the process leads its own group (``stop_devnet``).
    """
    import json

    with open(workdir / "devnet.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "devnet", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    network_file = workdir / "data" / "devnet" / "network.json"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"devnet exited: {(workdir / 'devnet.log').read_text()[-3000:]}")
        return network_file.exists()

    wait_until(ready, timeout, 0.3, "the devnet's network.json")
    return process, json.loads(network_file.read_text())


def stop_devnet(process: subprocess.Popen, timeout: float = 90) -> None:
    """SIGTERM (the devnet stops its parts), then the whole group if it does not end in time."""
    import signal

    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
