#!/bin/sh
# Entrypoint of the compose RabbitMQ container (runs before the image's docker-entrypoint.sh).
#
# Renders /etc/sip-rabbitmq/definitions.json (a template without secrets) into $SIP_DEFINITIONS_OUT,
# the file rabbitmq.conf loads with load_definitions: the operator's name and, for the operator and
# the three service users, a salted SHA-256 password hash (RabbitMQ's rabbit_password_hashing_sha256:
# base64(salt[4] ++ sha256(salt[4] ++ password))) computed from the environment:
#
#   RABBITMQ_ADMIN_USER, RABBITMQ_ADMIN_PASSWORD, RABBITMQ_PLANNING_PASSWORD,
#   RABBITMQ_CONSENT_PASSWORD, RABBITMQ_NOTIFY_PASSWORD
#
# Plain passwords are never written to disk. Definitions are imported at every boot, so a password
# changed in .env takes effect when the container is recreated. Then it execs its arguments, if any
# (compose passes: docker-entrypoint.sh rabbitmq-server). With no arguments it only renders (tests).
set -eu

TEMPLATE=${SIP_DEFINITIONS_TEMPLATE:-/etc/sip-rabbitmq/definitions.json}
OUT=${SIP_DEFINITIONS_OUT:-/run/sip-rabbitmq/definitions.json}

fail() {
    echo "sip-rabbitmq: $*" >&2
    exit 1
}

# Refuse what the services would refuse, and what would break an amqp:// URL (it is not URL-encoded).
check_secret() { # name value
    case $2 in
        '') fail "$1 is not set (see .env.example)" ;;
        *CHANGE_ME*) fail "$1 still holds the CHANGE_ME placeholder" ;;
        *[!A-Za-z0-9._~-]*) fail "$1 may only hold A-Z a-z 0-9 . _ ~ - (it goes into amqp:// URLs)" ;;
    esac
    [ "${#2}" -ge 16 ] || fail "$1 is shorter than 16 characters"
}

sha256_bin() { # stdin -> 32 raw bytes
    if command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha256 -binary
    else # coreutils only: hex digest -> bytes through printf octal escapes (POSIX sh)
        hex=$(sha256sum | cut -c1-64)
        while [ -n "$hex" ]; do
            byte=${hex%"${hex#??}"}
            hex=${hex#??}
            # shellcheck disable=SC2059
            printf "\\$(printf '%03o' "0x$byte")"
        done
    fi
}

password_hash() { # password -> base64(salt ++ sha256(salt ++ password))
    work=$(mktemp -d)
    head -c 4 /dev/urandom >"$work/salt"
    { cat "$work/salt" && printf '%s' "$1"; } | sha256_bin >"$work/digest"
    [ "$(wc -c <"$work/digest" | tr -d ' ')" = 32 ] || fail "could not hash a password"
    cat "$work/salt" "$work/digest" | base64 | tr -d '\n'
    rm -rf "$work"
}

ADMIN_USER=${RABBITMQ_ADMIN_USER:-}
case $ADMIN_USER in
    '' | *[!A-Za-z0-9._-]*) fail "RABBITMQ_ADMIN_USER must be set and hold only A-Z a-z 0-9 . _ -" ;;
    planning | consent | notify) fail "RABBITMQ_ADMIN_USER must not be a service's user name" ;;
esac
check_secret RABBITMQ_ADMIN_PASSWORD "${RABBITMQ_ADMIN_PASSWORD:-}"
check_secret RABBITMQ_PLANNING_PASSWORD "${RABBITMQ_PLANNING_PASSWORD:-}"
check_secret RABBITMQ_CONSENT_PASSWORD "${RABBITMQ_CONSENT_PASSWORD:-}"
check_secret RABBITMQ_NOTIFY_PASSWORD "${RABBITMQ_NOTIFY_PASSWORD:-}"

# assignments, so that set -e stops here if hashing fails
admin_hash=$(password_hash "$RABBITMQ_ADMIN_PASSWORD")
planning_hash=$(password_hash "$RABBITMQ_PLANNING_PASSWORD")
consent_hash=$(password_hash "$RABBITMQ_CONSENT_PASSWORD")
notify_hash=$(password_hash "$RABBITMQ_NOTIFY_PASSWORD")

mkdir -p "$(dirname "$OUT")"
umask 077
# base64 output is [A-Za-z0-9+/=]: safe between '|' delimiters in sed and inside a JSON string
sed -e "s|@ADMIN_USER@|$ADMIN_USER|g" \
    -e "s|@ADMIN_PASSWORD_HASH@|$admin_hash|" \
    -e "s|@PLANNING_PASSWORD_HASH@|$planning_hash|" \
    -e "s|@CONSENT_PASSWORD_HASH@|$consent_hash|" \
    -e "s|@NOTIFY_PASSWORD_HASH@|$notify_hash|" \
    "$TEMPLATE" >"$OUT.tmp"
if grep -q '@[A-Z_]*@' "$OUT.tmp"; then
    fail "unfilled placeholder in $TEMPLATE"
fi
mv "$OUT.tmp" "$OUT"
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    # docker-entrypoint.sh drops to the rabbitmq user before the server reads the file
    chown -R rabbitmq:rabbitmq "$(dirname "$OUT")"
fi

[ "$#" -gt 0 ] || exit 0
exec "$@"
