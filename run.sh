#!/usr/bin/env bash
# Installs what is missing and runs the whole system on its embedded default:
# SQLite, in-process broker and channel layer, no external service.
# Arguments go to `manage.py devnet` (for example: ./run.sh --port 8100).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
system_packages
python_packages
exec "$VENV/bin/python" manage.py devnet "$@"
