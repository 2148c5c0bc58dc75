"""``manage.py backup`` and ``restore``: consistent copies, refused overwrites, a node resuming from one."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from conftest import clean_env, manage_argv, wait_until


def run(*args: str) -> dict:
    out = io.StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db(transaction=True)
def test_backup_and_restore_of_the_configured_database(tmp_path: Path, django_user_model) -> None:
    django_user_model.objects.create_user(username="kept", password="a long password 1")
    backup_file = tmp_path / "backups" / "aitbc.backup"
    outcome = run("backup", str(backup_file))
    assert outcome["action"] == "backup" and outcome["bytes"] == backup_file.stat().st_size > 0

    if connection.vendor == "sqlite":
        # Restore into a fresh directory's database and read the user back from it.
        fresh = tmp_path / "fresh" / "aitbc.sqlite3"
        restored = run("restore", str(backup_file), "--database-url", f"sqlite:///{fresh}")
        assert restored["database"] == str(fresh) and restored["tables"] > 10
        with sqlite3.connect(fresh) as db:
            assert db.execute("select username from auth_user").fetchall() == [("kept",)]
        with pytest.raises(CommandError, match="--force"):
            call_command("restore", str(backup_file), "--database-url", f"sqlite:///{fresh}")
        run("restore", str(backup_file), "--database-url", f"sqlite:///{fresh}", "--force")
    else:
        # Restore into a scratch database of the same server.
        settings_dict = connection.settings_dict
        scratch = f"{settings_dict['NAME']}_restore"
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
            cursor.execute(f'CREATE DATABASE "{scratch}"')
        try:
            user = settings_dict["USER"] or ""
            auth = f"{user}:{settings_dict['PASSWORD']}@" if settings_dict.get("PASSWORD") else f"{user}@"
            url = f"postgres://{auth}{settings_dict['HOST'] or ''}:{settings_dict['PORT'] or 5432}/{scratch}"
            assert run("restore", str(backup_file), "--database-url", url)["engine"] == "postgresql"
            with pytest.raises(CommandError, match="--force"):
                call_command("restore", str(backup_file), "--database-url", url)
            run("restore", str(backup_file), "--database-url", url, "--force")
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{scratch}"')


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"not a database at all" * 10)
    with pytest.raises(CommandError):
        call_command("restore", str(junk), "--database-url", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("create table t (x)")
    with pytest.raises(CommandError, match="not an AITBC database"):
        call_command("restore", str(other), "--database-url", f"sqlite:///{tmp_path / 'y.sqlite3'}")
    with pytest.raises(CommandError, match="no backup file"):
        call_command("restore", str(tmp_path / "missing"), "--database-url", f"sqlite:///{tmp_path / 'z.sqlite3'}")


def test_progress_is_plain_lines_when_not_on_a_terminal(tmp_path: Path) -> None:
    from aitbc_site.backup import Progress

    stream = io.StringIO()
    progress = Progress("backup", 10, stream=stream, interval=0)
    progress.update(5, 10)
    progress.update(10, 10)
    progress.close()
    assert stream.getvalue().splitlines() == ["backup: 5/10 pages (50%)", "backup: 10/10 pages (100%)"]


@pytest.mark.process
def test_a_node_backed_up_while_running_resumes_from_a_fresh_directory(spawn, tmp_path: Path) -> None:
    from chain.tests.support import fixed_keys, transfer
    from chain.tests.test_node_process import start_node, write_node_files

    keys = fixed_keys()
    files = write_node_files(tmp_path / "node", keys, block_time_ms=200)
    node = start_node(spawn, files)
    alice, bob = keys.funded[0], keys.funded[1]
    tx_id = node.post("/v1/chain/transactions", transfer(alice, 0, bob.address, 777)).json()["id"]
    node.wait_committed(tx_id)
    wait_until(lambda: node.status()["height"] >= 5, timeout=60, message="a few blocks")

    # Online: the node keeps producing blocks while the backup is taken.
    backup_file = tmp_path / "node.backup"
    done = subprocess.run(
        [*manage_argv("backup", str(backup_file), "--json")],
        env=clean_env(AITBC_DATA_DIR=files.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome = json.loads(done.stdout)
    assert outcome["engine"] == "sqlite" and outcome["pages"] > 0
    assert "backup:" in done.stderr, "plain progress lines when not on a terminal"
    backed_up_height = sqlite3.connect(backup_file).execute("select height from chain_chainstate").fetchone()[0]
    assert backed_up_height >= 5
    node.stop()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    restored = subprocess.run(
        manage_argv("restore", str(backup_file)),
        env=clean_env(AITBC_DATA_DIR=fresh),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "restored sqlite database" in restored.stdout
    files.data_dir = fresh
    resumed = start_node(spawn, files)
    assert "resumed" in resumed.spawned.log() and "genesis applied" not in resumed.spawned.log()
    assert resumed.tx_status(tx_id) == "committed"
    assert resumed.get(f"/v1/chain/accounts/{bob.address}").json()["balance"] == 1_000_000_000_000 + 777
    assert resumed.status()["height"] >= backed_up_height
    wait_until(
        lambda: resumed.status()["height"] > backed_up_height + 3, timeout=60, message="new blocks after the restore"
    )
