#!/opt/venv/bin/python
"""Exit 0 when a URL answers 2xx (the slim image has no curl): airflow-healthcheck URL."""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as exc:  # noqa: BLE001 — any failure means unhealthy
    print(exc, file=sys.stderr)
    sys.exit(1)
