"""``python manage.py devnet``: the whole system on its embedded default."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from aitbc_site.devnet import Devnet, Part, read_or_create_secret

logger = logging.getLogger("aitbc.devnet")


def ensure_admin(password: str) -> None:
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username="admin", defaults={"email": "admin@localhost"})
    user.is_staff = True
    user.is_superuser = True
    user.set_password(password)
    user.save()


class Command(BaseCommand):
    help = "Run the whole system locally: web (coordinator, dashboard, gateway) with its worker and beat."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="coordinator port (nodes at P+6+10i)")
        parser.add_argument("--validators", type=int, default=1)
        parser.add_argument("--providers", type=int, default=1)
        parser.add_argument(
            "--param", action="append", default=[], metavar="NAME=VALUE", help="override a genesis parameter"
        )
        parser.add_argument("--startup-timeout", type=float, default=180.0)

    def handle(self, *args, **options) -> None:
        port = options["port"]
        if not 1 <= port <= 65535 - 100:
            raise CommandError(f"--port must be between 1 and 65435, got {port}")

        devnet = Devnet(port=port)
        call_command("migrate", interactive=False, verbosity=0)
        admin_password_file = devnet.dir / "admin.password"
        ensure_admin(read_or_create_secret(admin_password_file))

        web_url = devnet.url(port)
        web = devnet.add(
            Part(
                role="web",
                name="coordinator",
                argv=devnet.manage("serve", "--host", "127.0.0.1", "--port", str(port)),
                env={},
                health_url=f"{web_url}/health",
                log_path=devnet.dir / "web.log",
            )
        )
        devnet.network = {
            "chain_id": None,
            "dashboard_url": web_url,
            "admin": {"username": "admin", "password_file": str(admin_password_file)},
            "faucet": None,
            "nodes": [],
            "coordinator": {"pid": None, "url": web_url, "address": None},
            "providers": [],
            "gateway": None,
        }

        devnet.install_signal_handlers()
        try:
            devnet.start_all(timeout=options["startup_timeout"])
            devnet.network["coordinator"]["pid"] = web.pid
            devnet.write_network()
            self.print_summary(devnet, admin_password_file)
            devnet.supervise()
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            self.stdout.write("stopping devnet ...")
            devnet.stop_all()
            self.stdout.write("devnet stopped")

    def print_summary(self, devnet: Devnet, admin_password_file) -> None:
        password = admin_password_file.read_text().strip()
        write = self.stdout.write
        write(self.style.SUCCESS(f"AITBC devnet is up ({'embedded' if settings.EMBEDDED else 'redis'} mode)"))
        write(f"  dashboard and admin   {devnet.network['dashboard_url']}/admin/  (admin / {password})")
        write(f"  health                {devnet.network['dashboard_url']}/health")
        write(f"  network description   {devnet.dir / 'network.json'}")
        write("Press Ctrl-C to stop.")
