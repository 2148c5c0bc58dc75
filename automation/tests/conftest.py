from __future__ import annotations

import pytest

from automation import services
from automation.gitea import GiteaClient
from automation.models import AutomationConfig
from automation.tests.gitea_standin import GiteaStandIn
from automation.tests.swagger_contract import Contract

AGENT = "aitbc1"
SIBLING = "aitbc"


@pytest.fixture(scope="session")
def contract() -> Contract:
    return Contract.load()


@pytest.fixture
def gitea(contract: Contract):
    """A served Gitea stand-in with the two agents and the repository owner as users.

    At teardown every request and answer it saw must have fitted the spec.
    """
    standin = GiteaStandIn(contract=contract)
    standin.add_user("oib")
    standin.add_user(AGENT)
    standin.add_user(SIBLING)
    standin.serve()
    yield standin
    standin.close()
    assert standin.violations == [], "\n".join(standin.violations[:20])


@pytest.fixture
def gitea_client(gitea: GiteaStandIn) -> GiteaClient:
    return GiteaClient(gitea.url, gitea.repo, gitea.tokens_for(AGENT), backoff=0.01)


@pytest.fixture
def sibling_client(gitea: GiteaStandIn) -> GiteaClient:
    return GiteaClient(gitea.url, gitea.repo, gitea.tokens_for(SIBLING), backoff=0.01)


@pytest.fixture
def config(db, gitea: GiteaStandIn, monkeypatch) -> AutomationConfig:
    """This agent's configuration pointing at the stand-in, token sealed in the row."""
    monkeypatch.setenv("AITBC_CLAIM_SETTLE_MS", "0")
    monkeypatch.setenv("GITEA_RETRY_BACKOFF_MS", "10")
    for name in ("GITEA_TOKEN", "GITEA_TOKEN_FILE", "GITEA_WEBHOOK_SECRET", "GITEA_WEBHOOK_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    config = services.config_get()
    config.gitea_url = gitea.url
    config.repo = gitea.repo
    config.agent = AGENT
    config.sibling_agent = SIBLING
    config.save()
    services.config_set_token(config=config, token=gitea.tokens_for(AGENT))
    return config
