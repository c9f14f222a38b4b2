#!/usr/bin/env bash
# What `make run` / `make test` need from this machine, before anything starts:
#   ensure-infra.sh run    the suite's ports are free (a second `make run` stops here, naming the port),
#                          and RabbitMQ runs (started if it is installed but stopped)
#   ensure-infra.sh test   RabbitMQ and PostgreSQL run (started if installed but stopped) — the default
#   ensure-infra.sh browser  only what the browser tests need: Debian's chromium and chromium-driver
#                          (/usr/bin/chromium, /usr/bin/chromedriver) and Node.js + npm (the OIDC provider
#                          and axe-core, devtools/oidc-provider); installed with apt-get when missing
# When something is missing it says what, and how to get it (Debian/Ubuntu packages, or compose), and
# exits 1 so that make stops at once.
set -u
MODE=${1:-test}
port_open() {  # something listens on host $1 port $2 (a connect, at most 3 s where `timeout` exists)
  if command -v timeout >/dev/null 2>&1; then timeout 3 bash -c ': 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
  else (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; fi
}
is_local() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 || $1 == "[::1]" ]]; }
say() { echo "ensure-infra: $*" >&2; }
wait_for() { for _ in $(seq 1 "$3"); do port_open "$1" "$2" && return 0; sleep 1; done; port_open "$1" "$2"; }

# ---- a second suite: every port `make run` listens on must be free ------------------------------
if [[ $MODE == run ]]; then
  busy=0
  check_free() {  # VAR default what
    local port=${!1:-$2}
    [[ $port =~ ^[0-9]+$ && $port != 0 ]] || return 0
    if port_open 127.0.0.1 "$port"; then
      say "port $port ($1, $3) is already in use — is another \`make run\` (or another program) running?"
      busy=1
    fi
  }
  check_free PLANNING_HTTP_PORT 8080 "planning's HTTP API"
  check_free CONSENT_HTTP_PORT 8081 "consent's HTTP API"
  check_free NOTIFY_HTTP_PORT 8082 "notify's HTTP API"
  [[ ${PLANNING_MLLP_ENABLED:-true} =~ ^(false|0|no|off)$ ]] || check_free PLANNING_MLLP_PORT 2575 "planning's HL7 v2 MLLP listener"
  check_free NOTIFY_SMTP_PORT 1025 "the development mail sink's SMTP"
  check_free MAILSINK_HTTP_PORT 8025 "the development mail sink's web page"
  if ((busy)); then
    say "not starting a second suite: stop the one running (Ctrl-C in its terminal), or give this one"
    say "other ports, e.g. PLANNING_HTTP_PORT=18080 CONSENT_HTTP_PORT=18081 NOTIFY_HTTP_PORT=18082 \\"
    say "  PLANNING_MLLP_PORT=12575 NOTIFY_SMTP_PORT=11025 MAILSINK_HTTP_PORT=18025 make run"
    exit 1
  fi
fi

# ---- the browser tests: Debian's chromium + chromedriver, Node.js + npm (tests/support/browser.py) --
ensure_browser() {
  local missing=()
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  ((${#missing[@]})) || return 0
  if command -v apt-get >/dev/null 2>&1 && [[ ${EUID:-1} == 0 ]]; then
    say "installing ${missing[*]} (Debian packages) for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
      || { say "apt-get could not install ${missing[*]}"; exit 1; }
  else
    say "the browser tests need ${missing[*]}, which are missing here, and apt-get is not available"
    say "(or this is not root). Debian/Ubuntu: sudo apt-get install -y --no-install-recommends ${missing[*]}"
    say "(tests/support/browser.py uses /usr/bin/chromium and /usr/bin/chromedriver; SIP_CHROMIUM and"
    say "SIP_CHROMEDRIVER name others). Without them, run the rest: make test PYTEST_ARGS='-m \"not browser\"'"
    exit 1
  fi
}
if [[ $MODE == browser ]]; then ensure_browser; exit 0; fi

# ---- RabbitMQ (SIP_AMQP_URL, default the machine's on 127.0.0.1:5672) --------------------------
url=${SIP_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
hostport=${url#*://}; hostport=${hostport%%/*}; hostport=${hostport##*@}
if [[ $hostport == \[*\]* ]]; then amqp_host=${hostport%%]*}]; rest=${hostport#*]}; amqp_port=${rest#:}
else amqp_host=${hostport%%:*}; amqp_port=${hostport#"$amqp_host"}; amqp_port=${amqp_port#:}; fi
[[ -n $amqp_port ]] || { [[ $url == amqps://* ]] && amqp_port=5671 || amqp_port=5672; }
[[ $amqp_host == "[::1]" ]] && amqp_host=::1

if ! port_open "$amqp_host" "$amqp_port"; then
  if is_local "$amqp_host" && command -v rabbitmq-server >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    rabbitmqctl -q await_startup >/dev/null 2>&1 || true
    wait_for "$amqp_host" "$amqp_port" 60 || {
      say "RabbitMQ is installed but did not start on $amqp_host:$amqp_port:"
      say "  sudo systemctl start rabbitmq-server; its log: sudo journalctl -u rabbitmq-server"
      exit 1
    }
  elif is_local "$amqp_host"; then
    say "RabbitMQ is missing: nothing answers on $amqp_host:$amqp_port and it is not installed here"
    say "(no rabbitmq-server). The suite's services talk over RabbitMQ; get one of:"
    say "  Debian/Ubuntu:  sudo apt-get install rabbitmq-server   (starts at once; make run uses its guest user)"
    say "  with compose:   cp .env.example .env, set its CHANGE_ME passwords, docker compose up -d rabbitmq,"
    say "                  then export SIP_AMQP_URL=amqp://<RABBITMQ_USER>:<RABBITMQ_PASSWORD>@127.0.0.1:5672/sip"
    exit 1
  else
    say "RabbitMQ is not reachable at $amqp_host:$amqp_port (SIP_AMQP_URL): is the broker up, the address right?"
    exit 1
  fi
fi

[[ $MODE == run ]] && exit 0

# ---- PostgreSQL (the tests: SIP_TEST_PG_DSN, default postgres@127.0.0.1:5432/test) -------------
dsn=${SIP_TEST_PG_DSN:-postgresql://postgres@127.0.0.1:5432/test}
hostport=${dsn#*://}; hostport=${hostport%%/*}; hostport=${hostport##*@}
pg_host=${hostport%%:*}; pg_port=${hostport#"$pg_host"}; pg_port=${pg_port#:}; pg_port=${pg_port:-5432}
if ! port_open "$pg_host" "$pg_port"; then
  if is_local "$pg_host" && command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_for "$pg_host" "$pg_port" 30 || {
      say "PostgreSQL is installed but did not start on $pg_host:$pg_port: sudo systemctl start postgresql"
      exit 1
    }
  else
    say "PostgreSQL is missing: nothing answers on $pg_host:$pg_port (SIP_TEST_PG_DSN); \`make test\` runs every"
    say "store on PostgreSQL too (\`make run\` does not need it). Get one of:"
    say "  Debian/Ubuntu:  sudo apt-get install postgresql, then let the tests in as in SIP_TEST_PG_DSN:"
    say "                  sudo -u postgres createdb test, and 'host all postgres 127.0.0.1/32 trust' in pg_hba.conf"
    say "                  (or a password: SIP_TEST_PG_DSN=postgresql://postgres:<password>@127.0.0.1:5432/test)"
    say "  with compose:   docker compose up -d postgres (needs .env), then"
    say "                  export SIP_TEST_PG_DSN=postgresql://<POSTGRES_USER>:<POSTGRES_PASSWORD>@127.0.0.1:5432/sip"
    exit 1
  fi
fi
exit 0
