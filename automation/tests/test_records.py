"""Configuration, records, the summary endpoint, the commands and the beat wiring."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from aitbc_site.beat import declared_schedule
from automation import selectors, services, tasks
from automation.models import AutomationConfig, Claim, Run
from automation.tests.conftest import AGENT, SIBLING
from automation.tests.gitea_standin import GiteaStandIn


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("ops", password="pw-for-tests-only", is_staff=True, is_superuser=True)


def test_a_fresh_install_takes_its_configuration_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("GITEA_URL", "https://gitea.example.org")
    monkeypatch.setenv("GITEA_REPO", "oib/aitbc")
    monkeypatch.setenv("AITBC_AGENT", "aitbc1")
    monkeypatch.setenv("AITBC_SIBLING_AGENT", "aitbc")
    monkeypatch.setenv("GITEA_TOKEN", "tok")
    monkeypatch.delenv("AITBC_ELIGIBLE_LABELS", raising=False)
    config = services.config_get()
    assert (config.gitea_url, config.repo, config.agent, config.sibling_agent) == (
        "https://gitea.example.org",
        "oib/aitbc",
        "aitbc1",
        "aitbc",
    )
    assert config.eligible_labels == ["task", "bug", "feature", "refactor", "security", "good-first-task-for-agent"]
    assert config.token_encrypted == "" and services.config_token(config) == "tok"
    assert services.config_problems(config) == []
    # Later the database wins: the environment only seeds a fresh install.
    monkeypatch.setenv("GITEA_REPO", "other/repo")
    assert services.config_get().repo == "oib/aitbc"


def test_the_token_is_stored_sealed_never_in_plain_text(db, monkeypatch):
    monkeypatch.delenv("GITEA_TOKEN", raising=False)
    config = services.config_get()
    services.config_set_token(config=config, token="very-secret-token")
    config.refresh_from_db()
    assert "very-secret-token" not in config.token_encrypted
    assert services.config_token(config) == "very-secret-token"


def test_a_token_file_is_read_when_no_token_is_sealed(db, tmp_path, monkeypatch):
    monkeypatch.delenv("GITEA_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("file-token\n")
    config = services.config_get()
    config.token_file = str(path)
    assert services.config_token(config) == "file-token"


def test_the_admin_never_shows_the_token(client, staff, monkeypatch):
    monkeypatch.delenv("GITEA_TOKEN", raising=False)
    config = services.config_get()
    services.config_set_token(config=config, token="very-secret-token")
    client.force_login(staff)
    page = client.get(f"/admin/automation/automationconfig/{config.pk}/change/")
    assert page.status_code == 200
    assert b"very-secret-token" not in page.content and config.token_encrypted.encode() not in page.content
    assert b"set (sealed)" in page.content


def test_the_admin_seals_a_new_token(client, staff, monkeypatch):
    monkeypatch.delenv("GITEA_TOKEN", raising=False)
    config = services.config_get()
    client.force_login(staff)
    form = {
        "gitea_url": "https://gitea.example.org",
        "repo": "oib/aitbc",
        "base_branch": "main",
        "token_file": "",
        "new_token": "typed-in-admin",
        "agent": "aitbc1",
        "sibling_agent": "aitbc",
        "eligible_labels": '["task"]',
        "protected_paths": '["automation/*"]',
        "lock_backend": "gitea",
        "git_remote": "",
        "claim_enabled": "on",
        "monitor_enabled": "on",
        "max_claims_per_run": "1",
        "merge_style": "merge",
        "new_webhook_secret": "",
    }
    response = client.post(f"/admin/automation/automationconfig/{config.pk}/change/", form)
    assert response.status_code == 302, response.content[:2000]
    config.refresh_from_db()
    assert services.config_token(config) == "typed-in-admin" and "typed-in-admin" not in config.token_encrypted
    assert config.eligible_labels == ["task"]


def test_the_summary_says_what_the_jobs_did(gitea: GiteaStandIn, config: AutomationConfig):
    gitea.add_issue("a task", labels=["task"])
    services.claim_task_run()
    gitea.inject("GET", r"/pulls$", 500, times=10)
    services.monitor_prs_run()
    summary = selectors.automation_summary()
    assert summary["configured"] and summary["agent"] == AGENT and summary["sibling_agent"] == SIBLING
    assert summary["claims"]["claimed"] == 1
    assert summary["active_claims"][0]["issue"] == 1
    assert summary["last_runs"]["claim_task"]["status"] == "ok"
    assert summary["last_runs"]["monitor_prs"]["status"] == "error"
    assert "500" in summary["last_error"]["error"]


def test_the_summary_endpoint_needs_a_login(client, staff):
    assert client.get("/v1/automation/summary").status_code in (401, 403)
    client.force_login(staff)
    response = client.get("/v1/automation/summary")
    assert response.status_code == 200
    assert set(response.json()) >= {"configured", "claims", "last_runs", "last_error", "open_prs"}


def test_the_summary_endpoint_is_read_only(client, staff):
    client.force_login(staff)
    assert client.post("/v1/automation/summary").status_code in (403, 405)


def test_claim_task_command_prints_what_it_did(gitea: GiteaStandIn, config: AutomationConfig, capsys):
    gitea.add_issue("Write the docs", labels=["task"])
    call_command("claim_task", "--dry-run")
    out = capsys.readouterr().out
    assert "would claim #1" in out and "dry run" in out
    assert not Claim.objects.exists()
    call_command("claim_task")
    out = capsys.readouterr().out
    assert "claim #1: won the gitea lock" in out
    assert Run.objects.filter(trigger="manual").count() == 2


def test_monitor_prs_command_prints_and_fails_on_error(gitea: GiteaStandIn, config: AutomationConfig, capsys):
    call_command("monitor_prs")
    assert "nothing to do" in capsys.readouterr().out
    gitea.inject("GET", r"/pulls$", 500, times=10)
    with pytest.raises(CommandError, match="500"):
        call_command("monitor_prs")


def test_beat_runs_both_jobs_on_their_schedule(db):
    schedule = declared_schedule()
    assert schedule["automation claim-task"] == ("automation.claim_task", 300)
    assert schedule["automation monitor-prs"] == ("automation.monitor_prs", 600)
    assert tasks.claim_task.name == "automation.claim_task" and tasks.monitor_prs.name == "automation.monitor_prs"


def test_the_beat_tasks_run_the_same_service(gitea: GiteaStandIn, config: AutomationConfig):
    gitea.add_issue("a task", labels=["task"])
    run = Run.objects.get(pk=tasks.claim_task.apply(kwargs={"trigger": "beat"}).get())
    assert run.trigger == "beat" and run.status == "ok" and run.actions[0]["action"] == "claim"
    run = Run.objects.get(pk=tasks.monitor_prs.apply().get())
    assert run.job == "monitor_prs" and run.status == "ok"


def test_the_webhook_is_installed_once_with_the_configured_secret(
    gitea: GiteaStandIn, config: AutomationConfig, capsys
):
    services.config_set_webhook_secret(config=config, secret="hook-secret")
    url = "https://aitbc.example.org/v1/automation/webhook"
    call_command("automation_webhook", "--url", url)
    call_command("automation_webhook", "--url", url)
    assert len(gitea.hooks) == 1
    hook = gitea.hooks[1]
    assert hook["config"]["url"] == url and hook["active"] and "pull_request" in hook["events"]
    body = gitea.calls("POST", r"/hooks$")[0][3]
    assert '"secret": "hook-secret"' in body and '"content_type": "json"' in body
    assert "webhook 1 ->" in capsys.readouterr().out


def test_installing_the_webhook_needs_a_secret(gitea: GiteaStandIn, config: AutomationConfig):
    with pytest.raises(CommandError, match="webhook secret"):
        call_command("automation_webhook", "--url", "https://x.example.org/v1/automation/webhook")
