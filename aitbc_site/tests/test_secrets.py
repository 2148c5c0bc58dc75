"""No secret ever shows where it should not: logs, error pages, admin pages, API answers.

Each flow runs in this process with every log record captured from the root logger at
DEBUG (and from the loggers that do not propagate), and with the commands' stdout and
stderr kept. Then the captured text, every HTTP body and every admin page a staff user
can open are searched for each secret the flow handled: passwords (also URL-encoded, as
forms send them), mnemonics and passphrases, private key seeds (hex and base64), gateway
API keys, Gitea tokens and webhook secrets. A secret that is meant to be shown once (a
new wallet's mnemonic, a new API key) is allowed in exactly that one answer.

Secret files (keystores and their passwords, the admin password, the demo API key, the
generated secret key) must be created 0600 whatever the umask.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import NoReverseMatch, reverse

from chain.protocol.keys import Key
from wallet import keystore as keystore_module
from wallet.keystore import encrypt_key, keystore_json
from wallet.mnemonic import key_from_mnemonic
from wallet.tests.conftest import live_node  # noqa: F401  (the fixture: one real chain node)
from wallet.tests.support import FAST_KDF, vector_key

pytestmark = pytest.mark.django_db

PASSWORD = "pw " + secrets.token_urlsafe(16) + " /+&="
OTHER_PASSWORD = "pw2 " + secrets.token_urlsafe(16)
WRONG_PASSWORD = "wrong " + secrets.token_urlsafe(16)
PASSPHRASE = "pp " + secrets.token_urlsafe(12)


# -- capturing and searching ------------------------------------------------------------------


class Captured(logging.Handler):
    """Every record as the log would show it, traceback included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    # Loggers that stop propagation (django.server, say) would hide their records from root.
    isolated = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    previous = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    for logger in isolated:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        for logger in isolated:
            logger.removeHandler(handler)


def forms_of(value: str | bytes) -> set[str]:
    """The ways a secret may be written out: as typed, URL-encoded, and for bytes hex and base64."""
    if isinstance(value, bytes):
        b64 = base64.b64encode(value).decode()
        b64url = base64.urlsafe_b64encode(value).decode()
        return {value.hex(), value.hex().upper(), b64, b64.rstrip("="), b64url, b64url.rstrip("=")}
    return {value, quote(value, safe=""), quote_plus(value)}


def seed_forms(key: Key) -> set[str]:
    return forms_of(key.seed)


def find_leaks(text: str, named_secrets: dict[str, str | bytes | Key]) -> list[str]:
    leaks = []
    for name, value in named_secrets.items():
        forms = seed_forms(value) if isinstance(value, Key) else forms_of(value)
        leaks += [f"{name} as {form!r}" for form in forms if form and form in text]
    return leaks


def assert_no_leak(where: str, text: str, named_secrets: dict[str, str | bytes | Key]) -> None:
    leaks = find_leaks(text, named_secrets)
    assert not leaks, f"{where} holds {', '.join(leaks)}"


def body(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode("utf-8", errors="replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in response.items())


@pytest.fixture
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keystore_module, "WRITE_PARAMS", FAST_KDF)


@pytest.fixture
def data_dir(tmp_path: Path, settings, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    settings.DATA_DIR = directory
    for name in ("AITBC_WALLET_PASSWORD", "AITBC_WALLET_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    # A node that is down: sends get as far as signing, then fail at the node.
    from conftest import find_free_port

    monkeypatch.setenv("AITBC_NODE_URL", f"http://127.0.0.1:{find_free_port()}")
    return directory


def run_command(*args: str) -> str:
    """``manage.py <args>`` in this process; stdout and stderr, or the error it stopped with."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
    except SystemExit as exc:
        err.write(f"exit {exc.code}\n")
    return out.getvalue() + "\n" + err.getvalue()


def first_json(text: str):
    return json.JSONDecoder().raw_decode(text.lstrip())[0]


def secret_file(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.write_text(content + "\n", encoding="utf-8")
    return path


# -- wallets ----------------------------------------------------------------------------------


def test_wallet_cli_create_import_send_and_failures_keep_every_secret_out_of_output_and_logs(
    captured: Captured, data_dir: Path, tmp_path: Path, fast_kdf: None
) -> None:
    password_file = secret_file(tmp_path, "password", PASSWORD)
    wrong_file = secret_file(tmp_path, "wrong", WRONG_PASSWORD)
    created_output = run_command("wallet", "create", "alice", "--password-file", str(password_file), "--json")
    created = first_json(created_output)
    mnemonic = created["mnemonic"]
    alice = key_from_mnemonic(mnemonic)
    assert alice.address == created["address"]

    imported = Key.generate()
    imported_mnemonic = "abandon " * 23 + "art"  # a valid 24-word phrase
    phrase_file = secret_file(tmp_path, "words", imported_mnemonic)
    passphrase_file = secret_file(tmp_path, "passphrase", PASSPHRASE)
    from_phrase = key_from_mnemonic(imported_mnemonic, PASSPHRASE)
    keystore_file = secret_file(tmp_path, "bob.keystore.json", keystore_json(encrypt_key(imported, OTHER_PASSWORD)))
    unopened = Key.generate()
    unopened_file = secret_file(tmp_path, "dave.json", keystore_json(encrypt_key(unopened, OTHER_PASSWORD)))
    other_file = secret_file(tmp_path, "other", OTHER_PASSWORD)
    typo = "abandon " * 22 + "abandn art"
    typo_file = secret_file(tmp_path, "typo", typo)

    outputs = [
        run_command(
            "wallet", "import", "carol", "--mnemonic-file", str(phrase_file), "--passphrase-file",
            str(passphrase_file), "--password-file", str(password_file),
        ),
        run_command("wallet", "import", "bob", "--keystore", str(keystore_file), "--password-file", str(other_file)),
        run_command("wallet", "import", "dave", "--keystore", str(unopened_file), "--password-file", str(wrong_file)),
        run_command("wallet", "import", "erin", "--mnemonic-file", str(typo_file), "--password-file",
                    str(password_file)),
        run_command("wallet", "list"),
        run_command("wallet", "show", "alice", "--json"),
        run_command("wallet", "send", "alice", "--to", imported.address, "--amount", "5", "--password-file",
                    str(wrong_file)),
        run_command("wallet", "send", "alice", "--to", imported.address, "--amount", "5", "--password-file",
                    str(password_file)),
        run_command("wallet", "sign", "bob", "--tx", str(secret_file(tmp_path, "tx.json", json.dumps(
            {"type": "transfer", "to": alice.address, "amount": 1, "fee": 1000, "nonce": 0, "memo": ""}))),
            "--password-file", str(other_file)),
    ]  # fmt: skip

    assert "wrong password" in outputs[2].lower() or "wrong_password" in outputs[2], outputs[2]
    assert "word 23" in outputs[3], outputs[3]
    named = {
        "password": PASSWORD,
        "keystore password": OTHER_PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "passphrase": PASSPHRASE,
        "mnemonic": mnemonic,
        "imported mnemonic": imported_mnemonic,
        "misspelt word": "abandn",
        "alice's seed": alice,
        "bob's seed": imported,
        "carol's seed": from_phrase,
        "dave's seed": unopened,
    }
    assert_no_leak("the commands' output", "\n".join(outputs), named)
    assert_no_leak("the log", captured.text(), named)
    # The mnemonic is shown exactly once, by create, and never again.
    assert created_output.count(mnemonic) == 1
    assert_no_leak("create's output besides the mnemonic", created_output.replace(mnemonic, ""), named)
    for path in (data_dir / "wallets").glob("*.keystore.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert_no_leak(f"{path.name}", path.read_text(), named)


def make_user(username: str, *, staff: bool = False):
    user_model = get_user_model()
    if staff:
        return user_model.objects.create_superuser(username, f"{username}@example.com", None)
    return user_model.objects.create_user(username)


def logged_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_wallet_rest_api_and_dashboard_pages_keep_every_secret_out_of_answers_pages_and_logs(
    captured: Captured, data_dir: Path, fast_kdf: None
) -> None:
    client = logged_in(make_user("alice"))
    bodies: list[str] = []

    def post_json(path: str, data: dict, expect: int) -> dict:
        response = client.post(path, data=json.dumps(data), content_type="application/json")
        assert response.status_code == expect, response.content
        bodies.append(body(response))
        return response.json()

    created_response = client.post(
        "/v1/wallets", data=json.dumps({"name": "main", "password": PASSWORD}), content_type="application/json"
    )
    assert created_response.status_code == 201, created_response.content
    created = created_response.json()
    mnemonic = created["mnemonic"]
    main_key = key_from_mnemonic(mnemonic)
    imported = Key.generate()
    phrase = "legal winner thank year wave sausage worth useful legal winner thank yellow"
    from_phrase = key_from_mnemonic(phrase, PASSPHRASE)

    post_json(
        "/v1/wallets/import",
        {"name": "phrase", "mnemonic": phrase, "passphrase": PASSPHRASE, "password": PASSWORD},
        201,
    )
    post_json(
        "/v1/wallets/import",
        {"name": "ks", "keystore": encrypt_key(imported, OTHER_PASSWORD), "password": OTHER_PASSWORD},
        201,
    )
    post_json(
        "/v1/wallets/import",
        {"name": "ks2", "keystore": encrypt_key(Key.generate(), OTHER_PASSWORD), "password": WRONG_PASSWORD},
        403,
    )
    post_json(
        "/v1/wallets/import",
        {"name": "typo", "mnemonic": phrase.replace("sausage", "sausag"), "password": PASSWORD},
        400,
    )
    to = imported.address
    post_json(f"/v1/wallets/{main_key.address}/send", {"to": to, "amount": 5, "password": WRONG_PASSWORD}, 403)
    post_json(f"/v1/wallets/{main_key.address}/send", {"to": to, "amount": 5, "password": PASSWORD}, 503)
    for path in ("/v1/wallets", f"/v1/wallets/{main_key.address}"):
        response = client.get(path)
        assert response.status_code == 200
        bodies.append(body(response))

    # The dashboard: forms, then the pages they lead to (messages included).
    pages = []
    form_posts = [
        ("/wallet/create", {"name": "page", "password": PASSWORD, "password2": PASSWORD}),
        ("/wallet/create", {"name": "page2", "password": PASSWORD, "password2": WRONG_PASSWORD}),
        ("/wallet/import", {"name": "pagephrase", "mnemonic": phrase, "passphrase": PASSPHRASE, "password": PASSWORD}),
        ("/wallet/import", {"name": "pagetypo", "mnemonic": phrase.replace("wave", "wavx"), "password": PASSWORD}),
        (f"/wallet/{main_key.address}/send", {"to": to, "amount": "1", "password": WRONG_PASSWORD}),
        (f"/wallet/{main_key.address}/send", {"to": to, "amount": "1", "password": PASSWORD}),
    ]
    page_mnemonic = None
    for path, data in form_posts:
        response = client.post(path, data, follow=True)
        assert response.status_code == 200, (path, response.status_code)
        text = body(response)
        if path == "/wallet/create" and data["password2"] == PASSWORD:
            page_mnemonic = response.context["mnemonic"]
            assert text.count(page_mnemonic) == 1
            text = text.replace(page_mnemonic, "")
        pages.append(text)
    for path in ("/wallet/", f"/wallet/{main_key.address}"):
        pages.append(body(client.get(path)))
    assert "word 5" in "".join(pages) and "word 6" in "".join(bodies), "the typo's position is reported"

    named = {
        "password": PASSWORD,
        "keystore password": OTHER_PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "passphrase": PASSPHRASE,
        "mnemonic": mnemonic,
        "imported mnemonic": phrase,
        "misspelt words": "sausag",
        "misspelt word": "wavx",
        "main seed": main_key,
        "imported seed": imported,
        "phrase seed": from_phrase,
    }
    assert page_mnemonic
    named["page mnemonic"] = page_mnemonic
    named["page seed"] = key_from_mnemonic(page_mnemonic)
    assert created_response.content.decode().count(mnemonic) == 1
    assert_no_leak("the create answer besides its mnemonic", body(created_response).replace(mnemonic, ""), named)
    assert_no_leak("API answers", "\n".join(bodies), named)
    assert_no_leak("dashboard pages", "\n".join(pages), named)
    assert_no_leak("the log", captured.text(), named)

    # Staff see every wallet in the admin, never a secret.
    staff = logged_in(make_user("root", staff=True))
    assert_no_leak("admin pages", admin_pages(staff), named)


# -- admin ------------------------------------------------------------------------------------


def admin_pages(client: Client, per_model: int = 5) -> str:
    """Every registered model's changelist and the change pages of its first objects."""
    texts = []
    for model, model_admin in admin.site._registry.items():
        info = model._meta.app_label, model._meta.model_name
        try:
            changelist = reverse("admin:{}_{}_changelist".format(*info))
        except NoReverseMatch:
            continue
        response = client.get(changelist)
        assert response.status_code == 200, (changelist, response.status_code)
        texts.append(body(response))
        for pk in model_admin.get_queryset(_staff_request(client)).values_list("pk", flat=True)[:per_model]:
            change = reverse("admin:{}_{}_change".format(*info), args=[pk])
            response = client.get(change)
            assert response.status_code == 200, (change, response.status_code)
            texts.append(body(response))
    return "\n".join(texts)


def _staff_request(client: Client):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.filter(is_superuser=True).first()
    return request


# -- gateway keys -----------------------------------------------------------------------------


def open_deposit(owner) -> str:
    from marketplace.models import Deposit

    deposit = Deposit.objects.create(
        owner=owner,
        payer=Key.generate().address,
        escrow_id=secrets.token_hex(32),
        amount=10**9,
        timeout_height=10**6,
        state=Deposit.OPEN,
    )
    return deposit.pk


def test_gateway_api_keys_appear_once_at_creation_and_never_in_logs_answers_or_admin(
    captured: Captured, data_dir: Path
) -> None:
    from django.core.cache import cache

    cache.clear()
    owner = make_user("keyholder")
    deposit = open_deposit(owner)
    client = logged_in(owner)

    response = client.post(
        "/v1/keys", data=json.dumps({"name": "laptop", "deposit": deposit}), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    secret = response.json()["key"]
    created_answer = body(response)
    assert created_answer.count(secret) == 1
    cli_output = run_command("apikey", "create", "--user", "keyholder", "--json")
    cli_secret = first_json(cli_output)["key"]
    assert cli_output.count(cli_secret) == 1

    bodies = [created_answer.replace(secret, ""), cli_output.replace(cli_secret, "")]
    wrong = "aitbc_" + secrets.token_urlsafe(30)
    anonymous = Client(raise_request_exception=False)
    for headers, path, expected in [
        ({"HTTP_AUTHORIZATION": f"Bearer {secret}"}, "/v1/models", 200),
        ({"HTTP_AUTHORIZATION": f"Bearer {wrong}"}, "/v1/models", 401),
        ({}, f"/k/{secret}/api/tags", 200),
        ({}, f"/k/{wrong}/api/tags", 401),
        ({"HTTP_AUTHORIZATION": f"Bearer {wrong}"}, "/api/tags", 401),
    ]:
        used = anonymous.get(path, **headers)
        assert used.status_code == expected, (path, used.status_code, used.content)
        bodies.append(body(used))
    key_id = response.json()["id"]
    assert client.post(f"/v1/keys/{key_id}/revoke").status_code == 200
    for path in ("/v1/models", f"/k/{secret}/api/tags"):
        revoked = anonymous.get(path, HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert revoked.status_code == 401, revoked.content
        bodies.append(body(revoked))
    bodies.append(body(client.get("/v1/keys")))
    bodies.append(body(client.get("/market/keys/")))
    bodies.append(run_command("apikey", "list", "--json"))

    named = {"api key": secret, "cli api key": cli_secret, "wrong key": wrong}
    assert_no_leak("answers, pages and command output", "\n".join(bodies), named)
    assert_no_leak("the log", captured.text(), named)
    assert_no_leak("admin pages", admin_pages(logged_in(make_user("root", staff=True))), named)


# -- chain keys of the coordinator, the provider and the devnet ------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Files must be private because the code makes them so, not because of the umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_coordinator_provider_and_devnet_secret_files_are_0600_and_never_logged(
    captured: Captured, data_dir: Path, open_umask: None, fast_kdf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aitbc_site.devnet import read_or_create_secret, write_secret_file
    from aitbc_site.management.commands.devnet import write_keystore
    from marketplace import keys as coordinator_keys
    from provider.keys import KeyLoadError, load_or_create_key
    from wallet.keystore import decrypt_keystore

    monkeypatch.setattr(coordinator_keys, "_cache", {})
    output = run_command("coordinator_key", "--json")
    info = first_json(output)
    coordinator_password = Path(info["password_file"]).read_text().strip()
    coordinator = decrypt_keystore(Path(info["keystore"]).read_text(), coordinator_password)

    provider_dir = data_dir / "provider"
    provider = load_or_create_key(provider_dir)
    provider_password = (provider_dir / "provider.password").read_text().strip()
    with pytest.raises(KeyLoadError) as wrong:
        load_or_create_key(
            provider_dir, provider_dir / "provider.keystore.json", secret_file(data_dir, "wrong", WRONG_PASSWORD)
        )

    devnet = data_dir / "devnet"
    admin_password = read_or_create_secret(devnet / "admin.password")
    faucet = Key.generate()
    write_keystore(faucet, devnet / "faucet.keystore.json", devnet / "faucet.password")
    faucet_password = (devnet / "faucet.password").read_text().strip()
    api_key = "aitbc_" + secrets.token_urlsafe(30)
    write_secret_file(devnet / "api_key", api_key + "\n")

    for path in [
        Path(info["keystore"]),
        Path(info["password_file"]),
        provider_dir / "provider.keystore.json",
        provider_dir / "provider.password",
        devnet / "admin.password",
        devnet / "faucet.keystore.json",
        devnet / "faucet.password",
        devnet / "api_key",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    named = {
        "coordinator password": coordinator_password,
        "coordinator seed": coordinator,
        "provider password": provider_password,
        "provider seed": provider,
        "wrong password": WRONG_PASSWORD,
        "admin password": admin_password,
        "faucet password": faucet_password,
        "faucet seed": faucet,
        "api key": api_key,
    }
    assert_no_leak("coordinator_key's output", output, named)
    assert_no_leak("the provider's key error", str(wrong.value), named)
    assert_no_leak("the log", captured.text(), named)


def test_a_wallet_keystore_written_by_the_cli_is_0600_whatever_the_umask(
    data_dir: Path, tmp_path: Path, open_umask: None, fast_kdf: None
) -> None:
    password_file = secret_file(tmp_path, "password", PASSWORD)
    run_command("wallet", "create", "umask", "--password-file", str(password_file))

    path = data_dir / "wallets" / "umask.keystore.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# -- Gitea token and webhook secret -----------------------------------------------------------


@pytest.fixture
def gitea_standin():
    from automation.tests.gitea_standin import GiteaStandIn
    from automation.tests.swagger_contract import Contract

    standin = GiteaStandIn(contract=Contract.load())
    standin.add_user("oib", token="t" + secrets.token_hex(20))
    standin.add_user("aitbc1", token="t" + secrets.token_hex(20))
    standin.add_user("aitbc", token="t" + secrets.token_hex(20))
    standin.serve()
    yield standin
    standin.close()


def test_gitea_token_and_webhook_secret_stay_out_of_logs_answers_and_admin(
    captured: Captured, data_dir: Path, gitea_standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from automation import services

    for name in ("GITEA_TOKEN", "GITEA_TOKEN_FILE", "GITEA_WEBHOOK_SECRET", "GITEA_WEBHOOK_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITEA_RETRY_BACKOFF_MS", "1")
    token = gitea_standin.tokens_for("aitbc1")
    wrong_token = "t" + secrets.token_hex(20)
    webhook_secret = secrets.token_urlsafe(24)
    config = services.config_get()
    config.gitea_url = gitea_standin.url
    config.repo = gitea_standin.repo
    config.agent = "aitbc1"
    config.sibling_agent = "aitbc"
    config.save()
    services.config_set_webhook_secret(config=config, secret=webhook_secret)

    services.config_set_token(config=config, token=token)
    good = services.monitor_prs_run(trigger="manual", dry_run=True)
    services.config_set_token(config=config, token=wrong_token)
    bad = services.monitor_prs_run(trigger="manual", dry_run=True)
    assert good.status != bad.status, (good.status, bad.status)

    staff = logged_in(make_user("root", staff=True))
    webhook = Client(raise_request_exception=False).post(
        "/v1/automation/webhook",
        data=b"{}",
        content_type="application/json",
        HTTP_X_GITEA_EVENT="issues",
        HTTP_X_GITEA_SIGNATURE="0" * 64,
    )
    pages = [body(webhook), body(staff.get("/automation/"))]
    named = {"gitea token": token, "wrong token": wrong_token, "webhook secret": webhook_secret}
    assert_no_leak("answers and pages", "\n".join(pages), named)
    assert_no_leak("the log", captured.text(), named)
    assert_no_leak("admin pages", admin_pages(staff), named)
    from automation.models import Run

    assert_no_leak("run records", "\n".join(repr(list(r.values())) for r in Run.objects.values()), named)


# -- a 500 with DEBUG off ---------------------------------------------------------------------


class BrokenNode:
    """A node client that fails in a way nobody planned for (a bug), so the request ends in a 500."""

    def __getattr__(self, name: str) -> Callable[..., object]:
        def fail(*args: object, **kwargs: object) -> object:
            raise RuntimeError("unexpected failure inside the node client")

        return fail


def test_a_500_with_debug_off_shows_and_logs_no_secret(
    captured: Captured, data_dir: Path, fast_kdf: None, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wallet import chain as wallet_chain

    settings.DEBUG = False
    client = logged_in(make_user("alice"))
    created = client.post(
        "/v1/wallets", data=json.dumps({"name": "main", "password": PASSWORD}), content_type="application/json"
    ).json()
    monkeypatch.setattr(wallet_chain, "get_chain_client", lambda node=None: BrokenNode())

    api = client.post(
        f"/v1/wallets/{created['address']}/send",
        data=json.dumps({"to": Key.generate().address, "amount": 5, "password": PASSWORD}),
        content_type="application/json",
    )
    page = client.post(
        f"/wallet/{created['address']}/send", {"to": Key.generate().address, "amount": "1", "password": PASSWORD}
    )

    assert api.status_code == 500 and page.status_code == 500, (api.status_code, page.status_code)
    assert "unexpected failure" in captured.text(), "the 500 is logged with its traceback"
    named = {"password": PASSWORD, "mnemonic": created["mnemonic"], "seed": key_from_mnemonic(created["mnemonic"])}
    assert_no_leak("the 500 answers", body(api) + body(page), named)
    assert "unexpected failure" not in body(api) + body(page)
    assert_no_leak("the log", captured.text(), named)


# -- a send that a real node commits ----------------------------------------------------------


@pytest.mark.process
def test_a_committed_send_from_the_cli_and_the_api_shows_and_logs_no_secret(
    captured: Captured,
    data_dir: Path,
    tmp_path: Path,
    live_node,  # noqa: F811  (the fixture imported above)
    fast_kdf: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AITBC_NODE_URL", live_node.url)
    funded = vector_key()
    keystore_file = secret_file(tmp_path, "funded.json", keystore_json(encrypt_key(funded, PASSWORD)))
    password_file = secret_file(tmp_path, "password", PASSWORD)
    to = Key.generate().address

    outputs = [
        run_command("wallet", "import", "funded", "--keystore", str(keystore_file), "--password-file",
                    str(password_file)),
        run_command("wallet", "send", "funded", "--to", to, "--amount", "7", "--password-file", str(password_file),
                    "--wait", "--json"),
    ]  # fmt: skip
    assert first_json(outputs[1])["status"] == "committed", outputs[1]

    client = logged_in(make_user("alice"))
    imported = client.post(
        "/v1/wallets/import",
        data=json.dumps({"name": "funded", "keystore": encrypt_key(funded, PASSWORD), "password": PASSWORD}),
        content_type="application/json",
    )
    sent = client.post(
        f"/v1/wallets/{funded.address}/send",
        data=json.dumps({"to": to, "amount": 7, "password": PASSWORD}),
        content_type="application/json",
    )
    assert sent.status_code == 202, sent.content

    named = {"password": PASSWORD, "seed": funded}
    assert_no_leak("the commands' output", "\n".join(outputs), named)
    assert_no_leak("the answers", body(imported) + body(sent), named)
    assert_no_leak("the log", captured.text(), named)
    assert_no_leak("the node's log", live_node.log_path.read_text(errors="replace"), named)
