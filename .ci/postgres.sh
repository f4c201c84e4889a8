# A throwaway PostgreSQL for the test run (sourced by .ci/run): Debian's `postgresql` package (installed
# when missing, as root), a fresh cluster listening only on a unix socket in a temporary folder, and
# ANOMALYMATCH_TEST_POSTGRES_URL naming its `scratch` database, so the label-store tests run on it too.

start_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
            echo "PostgreSQL is not installed and cannot be installed here: its tests are skipped" >&2
            return 0
        fi
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; then
            echo "PostgreSQL could not be installed: its tests are skipped" >&2
            return 0
        fi
    fi
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    PG_DIR=$(mktemp -d /tmp/anomalymatch-pg.XXXXXX)
    local as=()
    if [ "$(id -u)" = 0 ]; then  # initdb and postgres refuse to run as root
        chown postgres:postgres "$PG_DIR"
        as=(runuser -u postgres --)
    fi
    PG_CTL=("${as[@]}" "$bin/pg_ctl" -D "$PG_DIR/data")  # before start: the exit trap can stop it
    "${as[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    "${PG_CTL[@]}" -l "$PG_DIR/server.log" -w -o "-k $PG_DIR -c listen_addresses='' -p 5432 -c fsync=off" \
        start >/dev/null
    "${as[@]}" "$bin/createdb" -h "$PG_DIR" -p 5432 -U postgres scratch
    export ANOMALYMATCH_TEST_POSTGRES_URL="postgresql+psycopg://postgres@/scratch?host=$PG_DIR&port=5432"
    echo "PostgreSQL for the tests: $ANOMALYMATCH_TEST_POSTGRES_URL" >&2
}

stop_postgres() {
    if [ -n "${PG_DIR:-}" ]; then
        "${PG_CTL[@]}" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
