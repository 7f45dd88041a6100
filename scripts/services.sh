#!/usr/bin/env bash
# Makes sure everything the test suite needs outside Cargo is there, on Debian/Ubuntu:
#   - build dependencies: libpq-dev, default-libmysqlclient-dev, libsqlite3-dev (for the diesel
#     CLI), pkg-config, a C compiler; the sqlite3 command (the bulk tests' read-back);
#   - PostgreSQL, MariaDB, Redis and Memcached installed, running and reachable on 127.0.0.1;
#   - initdb/pg_ctl and mariadb-install-db/mariadbd for the fault suite's own throwaway servers;
#   - the test databases (from PG_DATABASE_URL / MYSQL_DATABASE_URL) and the tour's databases.
#
# Installs and starts only what is missing; an already-working setup is left as it is. On a
# fresh machine it also makes the servers usable without a password from 127.0.0.1 (PostgreSQL
# `trust` for 127.0.0.1 and ::1 when this script created the cluster; MariaDB root over TCP
# with an empty password, keeping unix_socket login). Fails with a message, never skips.
#
# Usage: scripts/services.sh            (scripts/test.sh runs it first)
set -euo pipefail

PG_DATABASE_URL="${PG_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/diesel_budget_test}"
MYSQL_DATABASE_URL="${MYSQL_DATABASE_URL:-mysql://root@127.0.0.1:3306/diesel_budget_test}"
REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
MEMCACHED_HOST="${MEMCACHED_HOST:-127.0.0.1}"
MEMCACHED_PORT="${MEMCACHED_PORT:-11211}"
WAIT_SECONDS="${WAIT_SECONDS:-30}"

say() { printf '   %s\n' "$*"; }
die() {
    printf 'services.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# shellcheck disable=SC2016 # ${Status} is dpkg-query's field, not a shell variable
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

APT_UPDATED=0
# Installs the Debian packages among "$@" that are not installed yet.
ensure_packages() {
    local missing=() p
    if ! command -v dpkg-query >/dev/null 2>&1; then
        say "not a Debian system: cannot check packages $*; assuming they are installed"
        return 0
    fi
    for p in "$@"; do
        installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get"
    say "installing ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
}

# parse_url URL: sets URL_USER URL_PASS URL_HOST URL_PORT URL_DB (percent-encoding not decoded).
parse_url() {
    local re='^[a-z]+://(([^:@/]*)(:([^@/]*))?@)?([^:/?]+)(:([0-9]+))?/([^?]+)'
    [[ $1 =~ $re ]] || die "cannot parse database URL: $1"
    URL_USER=${BASH_REMATCH[2]}
    URL_PASS=${BASH_REMATCH[4]}
    URL_HOST=${BASH_REMATCH[5]}
    URL_PORT=${BASH_REMATCH[7]}
    URL_DB=${BASH_REMATCH[8]}
}

is_local() { [ "$1" = 127.0.0.1 ] || [ "$1" = localhost ] || [ "$1" = ::1 ]; }

# wait_for COMMAND...: polls COMMAND for up to WAIT_SECONDS.
wait_for() {
    local i
    for ((i = 0; i < WAIT_SECONDS; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# --- build dependencies --------------------------------------------------------------------
build_deps() {
    local pkgs=(libpq-dev default-libmysqlclient-dev libsqlite3-dev pkg-config)
    command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
    # The bulk tests read their rows back with each backend's own client: sqlite3 here, psql
    # and mariadb with the server packages below.
    command -v sqlite3 >/dev/null 2>&1 || pkgs+=(sqlite3)
    ensure_packages "${pkgs[@]}"
    say "build dependencies: ok"
}

# --- PostgreSQL ----------------------------------------------------------------------------
PG_FRESH=0
pg() { psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 "$@"; }
pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

# Connection settings from PG_DATABASE_URL, for psql and pg_isready.
pg_vars() {
    parse_url "$PG_DATABASE_URL"
    PG_HOST=$URL_HOST PG_PORT=${URL_PORT:-5432} PG_USER=${URL_USER:-postgres} PG_DB=$URL_DB
    if [ -n "$URL_PASS" ]; then export PGPASSWORD="$URL_PASS"; fi
}

postgres_up() {
    pg_vars
    if is_local "$PG_HOST"; then
        installed postgresql || PG_FRESH=1
        ensure_packages postgresql
    else
        ensure_packages postgresql-client
    fi
    local version
    if ! pg_ready; then
        is_local "$PG_HOST" || die "PostgreSQL at $PG_HOST:$PG_PORT is unreachable (not local: start it yourself)"
        version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
        [ -n "$version" ] || die "PostgreSQL is installed but /usr/lib/postgresql has no version"
        if [ ! -d "/etc/postgresql/$version/main" ]; then
            say "creating PostgreSQL $version cluster 'main' (port $PG_PORT)"
            as_root pg_createcluster --port "$PG_PORT" "$version" main >/dev/null
            PG_FRESH=1
        fi
        if [ "$PG_FRESH" -eq 1 ]; then pg_trust_local "$version"; fi
        say "starting PostgreSQL $version/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
            say "pg_ctlcluster start failed (already running?); waiting for the server anyway"
        wait_for pg_ready ||
            die "PostgreSQL did not become reachable on $PG_HOST:$PG_PORT within ${WAIT_SECONDS}s; see /var/log/postgresql/postgresql-$version-main.log"
    fi
    if ! pg -tAc 'SELECT 1' >/dev/null 2>&1; then
        version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
        if is_local "$PG_HOST" && [ "$PG_FRESH" -eq 1 ] && [ -n "$version" ]; then
            pg_trust_local "$version"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
            sleep 1
        fi
        pg -tAc 'SELECT 1' >/dev/null ||
            die "PostgreSQL at $PG_HOST:$PG_PORT is up but user '$PG_USER' cannot log in without a password prompt.
  Put the password in PG_DATABASE_URL, or allow local logins in pg_hba.conf, e.g. first line:
    host all all 127.0.0.1/32 trust
  then: pg_ctlcluster <version> main reload"
    fi
    say "PostgreSQL: $PG_HOST:$PG_PORT reachable, user $PG_USER ok"
}

# Lets every local TCP connection in without a password (only for a cluster this script set up).
pg_trust_local() {
    local hba="/etc/postgresql/$1/main/pg_hba.conf"
    [ -f "$hba" ] || return 0
    if ! as_root grep -q '^# diesel-budget: trust local TCP' "$hba"; then
        say "allowing password-less TCP logins from 127.0.0.1 and ::1 in $hba"
        as_root sed -i '1i # diesel-budget: trust local TCP (added by scripts/services.sh)\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
}

pg_create_db() {
    local db=$1
    if [ "$(pg -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
        say "creating PostgreSQL database $db"
        pg -q -c "CREATE DATABASE \"$db\"" >/dev/null
    fi
}

# --- MariaDB -------------------------------------------------------------------------------
my() {
    mysql --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -u "$MY_USER" --connect-timeout=5 "$@"
}
my_ready() { mysqladmin --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -u "$MY_USER" --connect-timeout=2 ping; }

# Connection settings from MYSQL_DATABASE_URL, for mysql and mysqladmin.
my_vars() {
    parse_url "$MYSQL_DATABASE_URL"
    MY_HOST=$URL_HOST MY_PORT=${URL_PORT:-3306} MY_USER=${URL_USER:-root} MY_DB=$URL_DB
    if [ -n "$URL_PASS" ]; then export MYSQL_PWD="$URL_PASS"; fi
}

mariadb_up() {
    my_vars
    if is_local "$MY_HOST"; then
        ensure_packages mariadb-server
    else
        ensure_packages mariadb-client
    fi
    # `mysqladmin ping` succeeds whenever the server answers, even if the login is refused.
    if ! my_ready >/dev/null 2>&1; then
        is_local "$MY_HOST" || die "MariaDB at $MY_HOST:$MY_PORT is unreachable (not local: start it yourself)"
        say "starting MariaDB"
        if getent passwd mysql >/dev/null; then
            as_root install -d -o mysql -g mysql -m 0755 /run/mysqld
        fi
        # --user: Debian's stock config leaves it commented out, and mariadbd refuses root.
        as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
            -- --user=mysql
        wait_for my_ready ||
            die "MariaDB did not become reachable on $MY_HOST:$MY_PORT within ${WAIT_SECONDS}s; see /var/log/mysql/error.log"
    fi
    if ! my -e 'SELECT 1' >/dev/null 2>&1; then
        # Debian's MariaDB: root@localhost logs in through unix_socket only. Allow an empty
        # password too (over TCP from 127.0.0.1), keeping the socket login.
        if is_local "$MY_HOST" && [ "$MY_USER" = root ] && [ -z "$URL_PASS" ] &&
            as_root mysql --protocol=SOCKET -uroot -e 'SELECT 1' >/dev/null 2>&1; then
            say "allowing MariaDB root over TCP from 127.0.0.1 with an empty password"
            as_root mysql --protocol=SOCKET -uroot -e "
                ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
                CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
                GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
                FLUSH PRIVILEGES;"
        fi
        my -e 'SELECT 1' >/dev/null ||
            die "MariaDB at $MY_HOST:$MY_PORT is up but '$MY_USER' cannot log in over TCP.
  Put the password in MYSQL_DATABASE_URL, or as root: mysql -e \"ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')\""
    fi
    say "MariaDB: $MY_HOST:$MY_PORT reachable, user $MY_USER ok"
}

my_create_db() {
    my -e "CREATE DATABASE IF NOT EXISTS \`$1\`"
}

# The suite's own databases (named diesel_budget_*) start empty on every run, so a schema
# change in migrations/ never meets a table an earlier run created. Other names are left alone.
pg_recreate_db() {
    case $1 in diesel_budget_*) ;; *) pg_create_db "$1"; return ;; esac
    PGOPTIONS='-c client_min_messages=warning' pg -q -c "DROP DATABASE IF EXISTS \"$1\"" >/dev/null
    pg -q -c "CREATE DATABASE \"$1\"" >/dev/null
}

my_recreate_db() {
    case $1 in diesel_budget_*) ;; *) my_create_db "$1"; return ;; esac
    my -e "DROP DATABASE IF EXISTS \`$1\`; CREATE DATABASE \`$1\`"
}

# --- Redis ---------------------------------------------------------------------------------
redis_ready() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_up() {
    if is_local "$REDIS_HOST"; then ensure_packages redis-server; else ensure_packages redis-tools; fi
    if ! redis_ready; then
        is_local "$REDIS_HOST" || die "Redis at $REDIS_HOST:$REDIS_PORT is unreachable (not local: start it yourself)"
        say "starting Redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
        wait_for redis_ready ||
            die "Redis did not become reachable on $REDIS_HOST:$REDIS_PORT within ${WAIT_SECONDS}s"
    fi
    say "Redis: $REDIS_HOST:$REDIS_PORT reachable"
}

# The fault suite starts throwaway servers of its own (tests/faults/server.rs) to restart
# them: it needs initdb/pg_ctl (postgresql) and mariadb-install-db/mariadbd (mariadb-server)
# installed here even when the test servers are remote.
throwaway_server_deps() {
    ensure_packages postgresql mariadb-server
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
        die "postgresql is installed but no /usr/lib/postgresql/*/bin/initdb"
    command -v mariadb-install-db >/dev/null 2>&1 || command -v mysql_install_db >/dev/null 2>&1 ||
        die "mariadb-server is installed but there is no mariadb-install-db"
    say "throwaway servers for the fault suite: initdb, mariadb-install-db ok"
}

# --- Memcached -----------------------------------------------------------------------------
# `version` over bash's /dev/tcp (no client package needed): ready when it answers VERSION.
memcached_ready() {
    local reply
    reply=$(timeout 2 bash -c 'exec 3<>/dev/tcp/"$1"/"$2" && printf "version\r\n" >&3 && head -c 7 <&3' \
        _ "$MEMCACHED_HOST" "$MEMCACHED_PORT" 2>/dev/null) || return 1
    [ "$reply" = VERSION ]
}

memcached_up() {
    if is_local "$MEMCACHED_HOST"; then
        ensure_packages memcached
    fi
    if ! memcached_ready; then
        is_local "$MEMCACHED_HOST" ||
            die "Memcached at $MEMCACHED_HOST:$MEMCACHED_PORT is unreachable (not local: start it yourself)"
        say "starting Memcached"
        # -U 0: no UDP. Default item size limit (1 MiB), which the tests rely on.
        memcached -d -u nobody -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 ||
            die "memcached did not start"
        wait_for memcached_ready ||
            die "Memcached did not become reachable on $MEMCACHED_HOST:$MEMCACHED_PORT within ${WAIT_SECONDS}s"
    fi
    say "Memcached: $MEMCACHED_HOST:$MEMCACHED_PORT reachable"
}

services_up() {
    build_deps
    throwaway_server_deps
    postgres_up
    mariadb_up
    redis_up
    memcached_up
    pg_recreate_db "$PG_DB"
    pg_recreate_db diesel_budget_tour
    my_recreate_db "$MY_DB"
    my_recreate_db diesel_budget_tour
    say "databases: $PG_DB and diesel_budget_tour, fresh, on both servers"
}

# Runs only when executed, so that scripts/test.sh can source the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    services_up
fi
