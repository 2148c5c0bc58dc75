#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian 12 machine it first installs
# what is missing and starts PostgreSQL and Redis. Extra arguments go to
# every pytest run (for example: ./test.sh -x -k wallet).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh

system_packages test
python_packages
start_services

PY="$VENV/bin/python"
REDIS_BASE="${AITBC_TEST_REDIS_BASE:-redis://127.0.0.1:6379}"
export AITBC_TEST_REDIS_URL="$REDIS_BASE/14"
status=0
summary=()

part() {
    # part NAME ENV... -- PYTEST-ARGS...: one timed pytest run.
    local name="$1"; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local start=$SECONDS rc=0
    echo "=== $name"
    env -u DATABASE_URL -u REDIS_URL -u AITBC_DATA_DIR "${envs[@]}" "$PY" -m pytest "$@" || rc=$?
    # 5 = nothing selected: a part may be empty while an app has no such tests.
    [ $rc -eq 5 ] && rc=0
    [ $rc -ne 0 ] && status=1
    summary+=("$(printf '%-44s %5ss  exit %s' "$name" $((SECONDS - start)) $rc)")
}

total_start=$SECONDS
echo "=== lint"
"$VENV/bin/ruff" check . || status=1
"$VENV/bin/ruff" format --check . >/dev/null || { echo "ruff format: files need formatting"; status=1; }
"$PY" manage.py makemigrations --check --dry-run >/dev/null || { echo "models changed without migrations"; status=1; }

part "database layer on SQLite (REDIS_URL set)" "REDIS_URL=$REDIS_BASE/1" -- -m "not process" -q "$@"
part "database layer on PostgreSQL (REDIS_URL set)" "REDIS_URL=$REDIS_BASE/2" "DATABASE_URL=$AITBC_TEST_DATABASE_URL" -- \
    -m "not process" -q -p no:cacheprovider "$@"
part "processes (devnet, nodes, inference, browser)" -- -m process -q -p no:cacheprovider "$@"

echo
echo "=== timings"
printf '%s\n' "${summary[@]}"
echo "total $((SECONDS - total_start))s"
exit $status
