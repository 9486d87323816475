#!/usr/bin/env bash
# The test command of initdesk-gateway: `scripts/test.sh` from anywhere in the checkout.
#
# 1. Makes sure the real servers the tests talk to are there: PostgreSQL answers on
#    127.0.0.1:5432 (started when absent); Dovecot (IMAP, LMTP), Postfix, swaks, python3 and
#    openssl are installed (the tests start private Dovecot and Postfix instances). Tests
#    never skip a server that is missing: this script provides it or stops with a message.
# 2. Runs, stopping at the first failure: rustfmt check, clippy (warnings are errors),
#    every test target.
#
# Works unattended as root on a fresh Debian 12 with Rust installed (CI runs it with
# CI=true and no stdin). A server that already answers is used as it is, never touched.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() {
    printf '==> ERROR: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
# Daemons such as dovecot and postfix live in /usr/sbin, which is not on every user's PATH.
have_sbin() { have "$1" || [[ -x "/usr/sbin/$1" ]]; }

# rustfmt colours its diff even into a file unless told not to.
FMT_COLOR=()
if [[ -n "${CI:-}" ]]; then
    export CARGO_TERM_COLOR=never
    FMT_COLOR=(--color never)
fi

# Root runs system commands directly; anyone else goes through sudo (never prompting).
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO=(sudo -n)
fi

APT_UPDATED=0
apt_install() {
    have apt-get || die "cannot install $* here: apt-get is missing (install it yourself)"
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        say "apt-get update"
        "${SUDO[@]}" apt-get update -qq </dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "installing $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null ||
        die "apt-get install $* failed"
}

# --- PostgreSQL ------------------------------------------------------------------------

PG_HOST=127.0.0.1
PG_PORT=5432
PG_DB="test"
DEFAULT_PG_URL="postgres://postgres@${PG_HOST}:${PG_PORT}/${PG_DB}"
PG_WAIT_SECS=60

pg_ready() { have pg_isready && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 </dev/null; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# The newest PostgreSQL server version installed by the Debian packages, or nothing.
pg_server_version() {
    local bin
    for bin in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x "$bin" ]] && basename "$(dirname "$(dirname "$bin")")"
    done | sort -V | tail -n 1
}

# Effective value of a server setting (postgresql.conf plus conf.d), read without a running server.
pg_setting() {
    local ver=$1 cluster=$2 name=$3
    "${SUDO[@]}" runuser -u postgres -- "/usr/lib/postgresql/$ver/bin/postgres" \
        -c "config_file=/etc/postgresql/$ver/$cluster/postgresql.conf" -C "$name" 2>/dev/null
}

# Starts (or restarts) a local Debian cluster so that it serves 127.0.0.1:5432 with trust auth.
start_local_postgres() {
    local ver cluster status conf_dir hba listen tmp changed=0
    # A cluster already set to port 5432 is the one to use; otherwise "main" of the newest version.
    read -r ver cluster < <(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }') || true
    if [[ -z "${ver:-}" ]]; then
        ver=$(pg_server_version)
        [[ -n "$ver" ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
        cluster=main
        if pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { f = 1 } END { exit !f }'; then
            say "moving PostgreSQL cluster $ver/main to port $PG_PORT"
            "${SUDO[@]}" pg_conftool "$ver" main set port "$PG_PORT"
        else
            say "creating PostgreSQL cluster $ver/main on port $PG_PORT"
            "${SUDO[@]}" pg_createcluster --port "$PG_PORT" "$ver" main >/dev/null
        fi
    fi
    conf_dir=/etc/postgresql/$ver/$cluster

    # Listen on loopback TCP (Debian's default 'localhost' already does).
    listen=$(pg_setting "$ver" "$cluster" listen_addresses || true)
    if [[ ! ",${listen// /}," =~ ,(\*|localhost|127\.0\.0\.1|0\.0\.0\.0), ]]; then
        say "setting listen_addresses so that $ver/$cluster listens on localhost"
        "${SUDO[@]}" mkdir -p "$conf_dir/conf.d"
        printf "# added by initdesk-gateway scripts/test.sh\nlisten_addresses = '%s'\n" \
            "${listen:+$listen,}localhost" | "${SUDO[@]}" tee "$conf_dir/conf.d/zz-initdesk-test.conf" >/dev/null
        changed=1
    fi

    # pg_hba.conf: the first matching line wins, so trust lines for loopback go on top.
    hba=$conf_dir/pg_hba.conf
    local want=() addr
    for addr in 127.0.0.1/32 ::1/128; do
        if ! "${SUDO[@]}" grep -Eq "^[[:space:]]*host[[:space:]]+all[[:space:]]+(all|postgres)[[:space:]]+${addr//./\\.}[[:space:]]+trust" "$hba"; then
            want+=("host    all    postgres    $addr    trust")
        fi
    done
    if [[ ${#want[@]} -gt 0 ]]; then
        say "adding trust for user postgres on loopback to $hba"
        tmp=$(mktemp)
        { echo "# added by initdesk-gateway scripts/test.sh: the tests connect as postgres without a password"
          printf '%s\n' "${want[@]}"
          "${SUDO[@]}" cat "$hba"; } >"$tmp"
        # Rewriting in place keeps the file's owner and mode.
        "${SUDO[@]}" tee "$hba" <"$tmp" >/dev/null
        rm -f "$tmp"
        changed=1
    fi

    status=$(pg_lsclusters -h 2>/dev/null | awk -v v="$ver" -v c="$cluster" '$1 == v && $2 == c { print $4 }')
    if [[ "$status" == online* ]]; then
        if [[ "$changed" -eq 1 ]]; then
            say "restarting PostgreSQL $ver/$cluster"
            "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" restart
        fi
    else
        say "starting PostgreSQL $ver/$cluster"
        "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" start ||
            die "pg_ctlcluster could not start $ver/$cluster (see /var/log/postgresql/postgresql-$ver-$cluster.log)"
    fi
}

ensure_postgres() {
    if [[ -n "${INITDESK_TEST_POSTGRES_URL:-}" && "$INITDESK_TEST_POSTGRES_URL" != "$DEFAULT_PG_URL" ]]; then
        say "PostgreSQL: using INITDESK_TEST_POSTGRES_URL as given (no local server is managed)"
        if have pg_isready; then
            pg_isready -q -d "$INITDESK_TEST_POSTGRES_URL" -t 10 </dev/null ||
                die "the PostgreSQL server named by INITDESK_TEST_POSTGRES_URL does not answer"
        fi
        return
    fi
    # The tests fall back to this same URL (tests/it/helpers.rs), so it is not exported: the
    # gateway reads every INITDESK_* variable as a configuration key (SPEC 5.1.1), and an
    # INITDESK_TEST_* one in the environment of the tests makes each config load fail with
    # "unknown field `test`".

    if pg_ready; then
        say "PostgreSQL answers on $PG_HOST:$PG_PORT; using it as it is"
    else
        if ! have psql || ! have pg_isready; then
            if port_open "$PG_HOST" "$PG_PORT"; then
                # A server is there (a CI service container, say): only the client tools are missing.
                apt_install postgresql-client
            else
                apt_install postgresql
            fi
        elif [[ -z "$(pg_server_version)" ]] && ! port_open "$PG_HOST" "$PG_PORT"; then
            apt_install postgresql
        fi
        # The package may have started its cluster already.
        if ! pg_ready; then
            have pg_ctlcluster || die "pg_ctlcluster is missing (is postgresql-common installed?)"
            start_local_postgres
            say "waiting up to ${PG_WAIT_SECS}s for PostgreSQL on $PG_HOST:$PG_PORT"
            local waited=0
            until pg_ready; do
                ((waited < PG_WAIT_SECS)) ||
                    die "PostgreSQL does not answer on $PG_HOST:$PG_PORT after ${PG_WAIT_SECS}s (see /var/log/postgresql/)"
                sleep 1
                waited=$((waited + 1))
            done
        fi
        say "PostgreSQL is ready on $PG_HOST:$PG_PORT"
    fi

    have psql || die "psql is missing (apt-get install postgresql-client)"
    local found
    found=$(psql -w -X -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" </dev/null) ||
        die "cannot log in to PostgreSQL on $PG_HOST:$PG_PORT as postgres without a password (pg_hba.conf needs trust for 127.0.0.1)"
    if [[ "$found" != 1 ]]; then
        say "creating database $PG_DB"
        psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
            -c "CREATE DATABASE $PG_DB" </dev/null || die "could not create database $PG_DB"
    fi
}

ensure_postgres

# --- Dovecot (IMAP) --------------------------------------------------------------------
# The IMAP tests (tests/it/dovecot.rs) start a private Dovecot each, with its own config,
# base_dir, state_dir, users and Maildirs in a temp dir and a free port on 127.0.0.1;
# nothing here starts a system-wide Dovecot. This only installs the programs.

# Where Debian's dovecot-imapd puts the IMAP server processes.
DOVECOT_IMAP_LOGIN=/usr/lib/dovecot/imap-login
# ... and dovecot-lmtpd its LMTP server (the outbound tests deliver customers' mail with it).
DOVECOT_LMTP=/usr/lib/dovecot/lmtp

# The pid of the system instance (base_dir /run/dovecot), if one runs.
dovecot_system_pid() {
    local pid
    pid=$("${SUDO[@]}" cat /run/dovecot/master.pid 2>/dev/null) || return 1
    [[ -n "$pid" ]] && "${SUDO[@]}" kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

ensure_dovecot() {
    local installed_dovecot=0 pid waited
    if ! have_sbin dovecot || ! have doveadm || [[ ! -x "$DOVECOT_IMAP_LOGIN" ]] || [[ ! -x "$DOVECOT_LMTP" ]]; then
        apt_install dovecot-core dovecot-imapd dovecot-lmtpd
        installed_dovecot=1
    fi
    if ! have_sbin dovecot || ! have doveadm; then
        die "dovecot is still missing after installing it (apt-get install dovecot-core dovecot-imapd)"
    fi
    [[ -x "$DOVECOT_LMTP" ]] ||
        die "Dovecot's LMTP server is still missing after installing it (apt-get install dovecot-lmtpd)"
    [[ -x "$DOVECOT_IMAP_LOGIN" ]] ||
        die "Dovecot's IMAP server is still missing after installing it (apt-get install dovecot-imapd)"
    # Should the package have started its own instance (where policy-rc.d lets it), it is
    # ours to stop: the tests run private instances and want no system one on 143/993. One
    # that was there before this run is left alone (it shares nothing with the tests).
    if [[ "$installed_dovecot" -eq 1 ]] && pid=$(dovecot_system_pid); then
        say "stopping the system Dovecot instance the package started (tests run private ones)"
        if have systemctl && [[ -d /run/systemd/system ]]; then
            "${SUDO[@]}" systemctl stop dovecot >/dev/null 2>&1 || true
        fi
        if dovecot_system_pid >/dev/null; then
            "${SUDO[@]}" doveadm stop >/dev/null 2>&1 || "${SUDO[@]}" kill "$pid" 2>/dev/null || true
        fi
        waited=0
        while dovecot_system_pid >/dev/null; do
            ((waited < 10)) || die "could not stop the system Dovecot instance (pid $pid)"
            sleep 1
            waited=$((waited + 1))
        done
    fi
    say "Dovecot is installed (the tests start private Dovecot instances)"
}

ensure_dovecot

# --- Postfix (SMTP relay / pipe transport) and swaks -----------------------------------
# The Postfix tests (tests/it/postfix.rs) start a private instance each, with its own
# config, queue and data directories in a temp dir and a free port on 127.0.0.1; nothing
# here starts a system-wide Postfix. swaks is one of the real SMTP clients they use.

ensure_postfix_and_swaks() {
    local missing=() installed_postfix=0 postfix_bin=postfix
    if ! have_sbin postfix || ! have_sbin postqueue; then
        missing+=(postfix)
    fi
    have swaks || missing+=(swaks)
    # The tests submit mail with Python's smtplib too, and make TLS certificates with openssl.
    have python3 || missing+=(python3)
    have openssl || missing+=(openssl)
    if [[ ${#missing[@]} -gt 0 ]]; then
        if [[ " ${missing[*]} " == *" postfix "* ]]; then
            # "No configuration": the package writes no /etc/postfix/main.cf, asks nothing,
            # and so has no system instance to start (nothing takes port 25).
            have debconf-set-selections || die "debconf-set-selections is missing (install debconf)"
            echo "postfix postfix/main_mailer_type select No configuration" |
                "${SUDO[@]}" debconf-set-selections || die "could not preseed postfix for debconf"
            installed_postfix=1
        fi
        apt_install "${missing[@]}"
    fi
    if ! have_sbin postfix || ! have_sbin postqueue; then
        die "postfix is still missing after installing it (apt-get install postfix)"
    fi
    have swaks || die "swaks is still missing after installing it (apt-get install swaks)"
    have python3 || die "python3 is still missing after installing it (apt-get install python3)"
    have openssl || die "openssl is still missing after installing it (apt-get install openssl)"
    have postfix || postfix_bin=/usr/sbin/postfix
    # Should the package have started its own instance anyway, it is ours to stop: the tests
    # run private instances and want no system one around. One that was there before this
    # run is left alone (it listens elsewhere and shares nothing with the tests).
    if [[ "$installed_postfix" -eq 1 ]] && "${SUDO[@]}" "$postfix_bin" status >/dev/null 2>&1; then
        say "stopping the system Postfix instance the package started (tests run private ones)"
        "${SUDO[@]}" "$postfix_bin" stop >/dev/null 2>&1 || die "could not stop the system Postfix instance"
    fi
    say "Postfix and swaks are installed (the tests start private Postfix instances)"
}

ensure_postfix_and_swaks

# --- Rust checks -----------------------------------------------------------------------

# --locked when Cargo.lock is committed (or, outside a git checkout, simply present).
LOCKED=()
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    if [[ -n "$(git ls-files Cargo.lock)" ]]; then
        LOCKED=(--locked)
    fi
elif [[ -f Cargo.lock ]]; then
    LOCKED=(--locked)
fi

say "cargo fmt --all -- --check"
cargo fmt --all -- --check "${FMT_COLOR[@]}"

say "cargo clippy --all-targets ${LOCKED[*]} -- -D warnings"
cargo clippy --all-targets "${LOCKED[@]}" -- -D warnings

export INITDESK_TEST_POSTGRES_URL="${INITDESK_TEST_POSTGRES_URL:-$DEFAULT_PG_URL}"
say "cargo test --all-targets ${LOCKED[*]} (PostgreSQL: $INITDESK_TEST_POSTGRES_URL)"
cargo test --all-targets "${LOCKED[@]}"

say "all checks passed"
