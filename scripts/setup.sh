# Sourced by run.sh and test.sh: installs what is missing on a fresh
# Debian 12 machine (system packages when run as root or with sudo, Python
# packages into .venv) and, for the tests, starts PostgreSQL and Redis.
# shellcheck shell=bash

AITBC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$AITBC_ROOT/.venv"

log() { printf '[setup] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else return 1
    fi
}

apt_install() {
    # Installs the Debian packages among "$@" that are not installed yet.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        log "please install: ${missing[*]}"
        return 1
    fi
    log "installing system packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { log "could not install ${missing[*]} (run as root or with sudo)"; return 1; }
}

system_packages() {
    # Base: Python with venv, a compiler for packages that build from source, git.
    local pkgs=(python3 python3-venv python3-dev build-essential cmake git)
    if [ "${1:-}" = test ]; then
        pkgs+=(postgresql redis-server chromium)
    fi
    apt_install "${pkgs[@]}"
}

python_packages() {
    local python=python3
    command -v python3.11 >/dev/null 2>&1 && python=python3.11
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtual environment in .venv"
        "$python" -m venv "$VENV"
    fi
    local stamp="$VENV/.requirements.sha256"
    local want
    want="$(sha256sum "$AITBC_ROOT/requirements.txt" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing Python packages from requirements.txt (pip's cache is kept between runs)"
        "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
        "$VENV/bin/python" -m pip install -q -r "$AITBC_ROOT/requirements.txt" 2>&1 | grep -v "is ignored" || true
        "$VENV/bin/python" -m pip check >/dev/null
        echo "$want" > "$stamp"
    fi
}

start_services() {
    if ! (command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432); then
        log "starting PostgreSQL"
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
    if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1); then
        log "starting Redis"
        as_root mkdir -p /var/lib/redis /var/log/redis
        as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log
        for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "Redis is not answering on 127.0.0.1:6379"; return 1; }

    # PostgreSQL: trust auth over TCP as on the development machines, else a
    # role named after this user over the local socket (a fresh Debian install).
    if [ -z "${AITBC_TEST_DATABASE_URL:-}" ]; then
        if psql "postgresql://postgres@127.0.0.1:5432/test" -Atc "select 1" >/dev/null 2>&1; then
            AITBC_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test"
        else
            local me
            me="$(id -un)"
            as_root su postgres -c "psql -Atc \"select 1 from pg_roles where rolname='$me'\" | grep -q 1 || createuser -s '$me'" || true
            as_root su postgres -c "psql -Atc \"select 1 from pg_database where datname='test'\" | grep -q 1 || createdb -O '$me' test" || true
            AITBC_TEST_DATABASE_URL="postgres:///test?host=/var/run/postgresql"
        fi
    fi
    export AITBC_TEST_DATABASE_URL
    psql "$AITBC_TEST_DATABASE_URL" -Atc "select 1" >/dev/null ||
        { log "PostgreSQL is not reachable at $AITBC_TEST_DATABASE_URL"; return 1; }
}
