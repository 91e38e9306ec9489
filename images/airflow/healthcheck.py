#!/opt/venv/bin/python
"""A container's health in milliseconds of CPU: `airflow-healthcheck URL | --job TYPE | --celery`.

The slim image has no curl, and `airflow jobs check` or `celery inspect ping` import all of
Airflow: about 10 s of CPU per look, every 30 s, per service.

    airflow-healthcheck URL                    exit 0 when URL answers 2xx
    airflow-healthcheck --job TYPE [SECONDS]   exit 0 when this host's newest running job of TYPE
                                               (TriggererJob, DagProcessorJob) sent a heartbeat in
                                               the last SECONDS (30: Airflow's default threshold)
    airflow-healthcheck --celery               exit 0 when this host's Celery worker listens on the
                                               broker for control messages (its pidbox queue)

The job check reads Airflow's `job` table as `airflow jobs check` does, through the metadata
database URL in AIRFLOW__DATABASE__SQL_ALCHEMY_CONN. The Celery check looks for the binding of
`celery@<hostname>.celery.pidbox` that the worker makes once it consumes from the broker
(AIRFLOW__CELERY__BROKER_URL, redis) and removes when it stops: where `celery inspect ping` asks
it to answer, this asks the broker whether it listens.
"""

import os
import socket
import sys
import urllib.request


def url_ok(url: str) -> bool:
    """Whether `url` answers 2xx."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return 200 <= response.status < 300


def job_alive(job_type: str, seconds: float) -> bool:
    """Whether this host's newest running job of `job_type` sent a heartbeat in the last `seconds`."""
    import psycopg2

    url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("+psycopg2", "", 1)
    with psycopg2.connect(url, connect_timeout=5) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM now() - latest_heartbeat) FROM job"
            " WHERE job_type = %s AND hostname = %s AND state = 'running'"
            " ORDER BY latest_heartbeat DESC LIMIT 1",
            (job_type, socket.getfqdn()),  # the name Airflow records (hostname_callable's default)
        )
        row = cursor.fetchone()
    if row is None:
        print(f"no running {job_type} of {socket.getfqdn()}", file=sys.stderr)
        return False
    print(f"{job_type}: last heartbeat {row[0]:.0f}s ago")
    return row[0] < seconds


def celery_listening() -> bool:
    """Whether this host's Celery worker (node `celery@<hostname>`) is bound to the broker's pidbox."""
    import redis

    queue = f"celery@{socket.gethostname()}.celery.pidbox"
    broker = redis.Redis.from_url(os.environ["AIRFLOW__CELERY__BROKER_URL"], socket_timeout=5)
    bindings = broker.smembers("_kombu.binding.celery.pidbox")  # routing key, pattern, queue; \x06\x16 apart
    if not any(binding.decode().endswith(queue) for binding in bindings):
        print(f"{queue} is not bound on the broker", file=sys.stderr)
        return False
    return True


def main(args: list[str]) -> int:
    """Exit status 0 when healthy."""
    try:
        if args[0] == "--celery":
            return 0 if celery_listening() else 1
        if args[0] == "--job":
            return 0 if job_alive(args[1], float(args[2]) if len(args) > 2 else 30.0) else 1
        return 0 if url_ok(args[0]) else 1
    except Exception as exc:  # noqa: BLE001 — any failure means unhealthy
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
