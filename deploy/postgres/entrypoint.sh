#!/bin/sh
# Entrypoint of the compose PostgreSQL container (runs before the image's docker-entrypoint.sh).
#
# Refuses to start with a weak or placeholder password, like deploy/rabbitmq/entrypoint.sh:
# POSTGRES_PASSWORD (the superuser POSTGRES_USER, for the operator only) and the services' roles'
# POSTGRES_PLANNING_PASSWORD, POSTGRES_CONSENT_PASSWORD, POSTGRES_NOTIFY_PASSWORD must be set, not
# hold CHANGE_ME, be at least 16 characters of A-Z a-z 0-9 . _ ~ - (they go into postgresql:// URLs)
# and differ from their user's name. The roles and databases are made by
# deploy/postgres/initdb/10-service-roles.sh on first start. Then it execs its arguments (compose
# passes: docker-entrypoint.sh postgres); with none it only checks (tests).
set -eu

fail() {
    echo "sip-postgres: $*" >&2
    exit 1
}

check_secret() { # name value user
    case $2 in
        '') fail "$1 is not set (see .env.example)" ;;
        *CHANGE_ME*) fail "$1 still holds the CHANGE_ME placeholder" ;;
        *[!A-Za-z0-9._~-]*) fail "$1 may only hold A-Z a-z 0-9 . _ ~ - (it goes into postgresql:// URLs)" ;;
    esac
    [ "${#2}" -ge 16 ] || fail "$1 is shorter than 16 characters"
    [ "$2" != "$3" ] || fail "$1 must not be the user name"
}

ADMIN_USER=${POSTGRES_USER:-}
case $ADMIN_USER in
    '' | *[!A-Za-z0-9_]*) fail "POSTGRES_USER must be set and hold only A-Z a-z 0-9 _" ;;
    planning | consent | notify) fail "POSTGRES_USER must not be a service's role name" ;;
esac
check_secret POSTGRES_PASSWORD "${POSTGRES_PASSWORD:-}" "$ADMIN_USER"
check_secret POSTGRES_PLANNING_PASSWORD "${POSTGRES_PLANNING_PASSWORD:-}" planning
check_secret POSTGRES_CONSENT_PASSWORD "${POSTGRES_CONSENT_PASSWORD:-}" consent
check_secret POSTGRES_NOTIFY_PASSWORD "${POSTGRES_NOTIFY_PASSWORD:-}" notify

[ "$#" -gt 0 ] || exit 0
exec "$@"
