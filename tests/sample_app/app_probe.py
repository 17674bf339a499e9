"""Sends requests to the jobapp of the current directory and prints the answers as JSON.

Run with the app dir as working directory: ``python app_probe.py '[["GET", "/api/health", null]]'``.
A separate process per release, because every release's package is called ``jobapp``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

sys.path.insert(0, os.getcwd())
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from fastapi.testclient import TestClient
from jobapp.app import create_app


def main() -> None:
    calls = json.loads(sys.argv[1])
    answers = []
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        for method, path, body in calls:
            response = client.request(method, path, json=body)
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
            answers.append({"status": response.status_code, "body": payload})
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
