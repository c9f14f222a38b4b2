#!/bin/sh
# PostgreSQL init script (docker-compose.yml mounts deploy/postgres/initdb/ as
# /docker-entrypoint-initdb.d/; the postgres image runs it once, on an empty data directory, with the
# server up and POSTGRES_USER its superuser).
#
# Least privilege: one LOGIN role per service (planning, consent, notify), not superuser, no
# CREATEDB/CREATEROLE, owning only its own database of the same name; CONNECT (and every other right)
# on each database revoked from PUBLIC, so a service's role cannot connect to another service's
# database. Passwords from the environment: POSTGRES_PLANNING_PASSWORD, POSTGRES_CONSENT_PASSWORD,
# POSTGRES_NOTIFY_PASSWORD (deploy/postgres/entrypoint.sh has refused weak ones before the server
# started). Connection: psql's defaults or PGHOST/PGPORT (the image: its local socket).
set -eu

: "${POSTGRES_USER:?POSTGRES_USER is not set}"
ADMIN_DB=${POSTGRES_DB:-$POSTGRES_USER}

psql_admin() { # database, then psql arguments
    db=$1
    shift
    psql -X -q -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --dbname "$db" "$@"
}

for service in planning consent notify; do
    case $service in
        planning) password=${POSTGRES_PLANNING_PASSWORD:-} ;;
        consent) password=${POSTGRES_CONSENT_PASSWORD:-} ;;
        notify) password=${POSTGRES_NOTIFY_PASSWORD:-} ;;
    esac
    if [ -z "$password" ]; then
        echo "sip-postgres: the password of role $service is not set (see .env.example)" >&2
        exit 1
    fi
    # psql variables quote safely (:"x" an identifier, :'x' a literal); the password reaches psql
    # through its environment (\getenv, psql 15+), never its command line.
    SIP_ROLE_PASSWORD=$password psql_admin "$ADMIN_DB" -v service="$service" <<'SQL'
\getenv password SIP_ROLE_PASSWORD
CREATE ROLE :"service" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';
CREATE DATABASE :"service" OWNER :"service";
REVOKE ALL ON DATABASE :"service" FROM PUBLIC;
SQL
    # inside the service's database: the public schema is the service's alone (PostgreSQL < 15 lets
    # PUBLIC create in it)
    psql_admin "$service" -v service="$service" <<'SQL'
ALTER SCHEMA public OWNER TO :"service";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
done

# the superuser's own database is not for the services either
psql_admin "$ADMIN_DB" -v db="$ADMIN_DB" <<'SQL'
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
echo "sip-postgres: roles and databases planning, consent, notify created" >&2
