"""Consistent backups of the database and their restore (``manage.py backup`` / ``restore``).

SQLite: SQLite's online backup API copies the database page by page while the
processes that use it keep running (WAL mode), and the copy is one consistent
snapshot. It is written beside the target and renamed into place, so a crash never
leaves half a file. PostgreSQL: ``pg_dump --format=custom`` (consistent by itself: it
reads in one repeatable-read transaction) and ``pg_restore --clean``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dj_database_url

PAGES_PER_STEP = 1024
SQLITE_MAGIC = b"SQLite format 3\x00"


class BackupError(Exception):
    pass


@dataclass
class Outcome:
    action: str
    engine: str
    database: str
    file: str
    bytes: int
    seconds: float
    pages: int | None = None
    tables: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def database_settings(url: str | None = None) -> dict[str, Any]:
    if url:
        return dj_database_url.parse(url)
    from django.db import connections

    return dict(connections["default"].settings_dict)


def engine_of(db: dict[str, Any]) -> str:
    engine = db["ENGINE"]
    if engine.endswith("sqlite3"):
        return "sqlite"
    if "postgresql" in engine or "postgis" in engine:
        return "postgresql"
    raise BackupError(f"no backup for database engine {engine}")


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line every few seconds (and at the end)."""

    def __init__(self, what: str, total: int, *, stream=None, interval: float = 2.0) -> None:
        self.what, self.total = what, total
        self.stream = stream or sys.stderr
        self.interval = interval
        self.last = 0.0
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="page", file=self.stream)

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
        elif time.monotonic() - self.last >= self.interval or done >= total:
            self.last = time.monotonic()
            self.stream.write(f"{self.what}: {done}/{total} pages ({100 * done // max(1, total)}%)\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _sqlite_copy(source: sqlite3.Connection, target_path: Path, what: str, progress_stream=None) -> int:
    tmp = target_path.with_name(f".{target_path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    pages_total = source.execute("PRAGMA page_count").fetchone()[0]
    progress = Progress(what, pages_total, stream=progress_stream)
    try:
        target = sqlite3.connect(tmp)
        try:

            def report(status: int, remaining: int, total: int) -> None:
                progress.update(total - remaining, total)

            source.backup(target, pages=PAGES_PER_STEP, progress=report)
            # A standalone file: no WAL beside it, whatever mode the source was in.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
        os.replace(tmp, target_path)
    finally:
        progress.close()
        tmp.unlink(missing_ok=True)
    return pages_total


def _check_sqlite_file(path: Path) -> int:
    """The number of tables of a sound SQLite database written by this project."""
    with open(path, "rb") as handle:
        if handle.read(16) != SQLITE_MAGIC:
            raise BackupError(f"{path} is not a SQLite database")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"{path} is damaged: {check}")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    if "django_migrations" not in tables:
        raise BackupError(f"{path} is not an AITBC database (no django_migrations table)")
    return len(tables)


def _sqlite_has_data(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0
    finally:
        conn.close()


def _pg_env(db: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    args = []
    if db.get("HOST"):
        args += ["--host", str(db["HOST"])]
    if db.get("PORT"):
        args += ["--port", str(db["PORT"])]
    if db.get("USER"):
        args += ["--username", str(db["USER"])]
    env = dict(os.environ)
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    return args, env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def backup(file: Path, *, database_url: str | None = None, progress_stream=None) -> Outcome:
    db = database_settings(database_url)
    engine = engine_of(db)
    file = file.resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if engine == "sqlite":
        source_path = Path(db["NAME"])
        if not source_path.exists():
            raise BackupError(f"no database at {source_path}")
        source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True, timeout=30)
        try:
            pages = _sqlite_copy(source, file, "backup", progress_stream)
        finally:
            source.close()
        tables = _check_sqlite_file(file)
        return Outcome("backup", engine, str(source_path), str(file), file.stat().st_size,
                       round(time.monotonic() - started, 3), pages=pages, tables=tables)  # fmt: skip
    args, env = _pg_env(db)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    command = [_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(tmp), *args, str(db["NAME"])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
    os.replace(tmp, file)
    return Outcome("backup", engine, str(db["NAME"]), str(file), file.stat().st_size,
                   round(time.monotonic() - started, 3))  # fmt: skip


def restore(file: Path, *, database_url: str | None = None, force: bool = False, progress_stream=None) -> Outcome:
    """Put the backup ``file`` in place of the database. Stop every process using it first."""
    db = database_settings(database_url)
    engine = engine_of(db)
    file = file.resolve()
    if not file.is_file():
        raise BackupError(f"no backup file {file}")
    started = time.monotonic()
    if engine == "sqlite":
        tables = _check_sqlite_file(file)
        target = Path(db["NAME"])
        if _sqlite_has_data(target) and not force:
            raise BackupError(f"{target} already holds a database; give --force to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            pages = _sqlite_copy(source, target, "restore", progress_stream)
        finally:
            source.close()
        # The replaced database's write-ahead log belongs to the old file.
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        return Outcome("restore", engine, str(target), str(file), file.stat().st_size,
                       round(time.monotonic() - started, 3), pages=pages, tables=tables)  # fmt: skip
    args, env = _pg_env(db)
    command = [_tool("pg_restore"), "--no-owner", "--single-transaction", "--exit-on-error"]
    if force:
        command += ["--clean", "--if-exists"]
    command += [*args, "--dbname", str(db["NAME"]), str(file)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        hint = "" if force else " (a database that already holds tables needs --force)"
        raise BackupError(f"pg_restore failed{hint}: {done.stderr.strip()}")
    return Outcome("restore", engine, str(db["NAME"]), str(file), file.stat().st_size,
                   round(time.monotonic() - started, 3))  # fmt: skip


def printer(stdout, as_json: bool) -> Callable[[Outcome], None]:
    import json

    def show(outcome: Outcome) -> None:
        if as_json:
            stdout.write(json.dumps(outcome.as_dict()))
            return
        verb = "backed up" if outcome.action == "backup" else "restored"
        source, target = (
            (outcome.database, outcome.file) if outcome.action == "backup" else (outcome.file, outcome.database)
        )
        detail = f", {outcome.pages} pages" if outcome.pages is not None else ""
        stdout.write(
            f"{verb} {outcome.engine} database {source} to {target}: {outcome.bytes} bytes{detail} "
            f"in {outcome.seconds:.2f}s"
        )

    return show
