#!/usr/bin/env bash
# Start the machine's RabbitMQ and PostgreSQL if they are not running (no-op when they are).
set -u
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exec 3>&- 3<&-; }

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "ensure-infra: starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    rabbitmqctl -q await_startup >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do port_open 5672 && break; sleep 1; done
  fi
  port_open 5672 || { echo "ensure-infra: RabbitMQ is not reachable on 127.0.0.1:5672" >&2; exit 1; }
fi

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "ensure-infra: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do port_open 5432 && break; sleep 1; done
  fi
  port_open 5432 || echo "ensure-infra: PostgreSQL is not reachable on 127.0.0.1:5432 (only PostgreSQL tests need it)" >&2
fi
exit 0
