"""A stand-in W&B server on localhost, enough for `wandb.init` online and the run's file
stream to be accepted: every GraphQL query gets one superset answer, every other request
an empty JSON object. `stop()` takes it away mid-run, as a network outage would."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _graphql_answer(request: dict) -> dict:
    name = request.get("variables", {}).get("name") or "run"
    bucket = {"id": "UnVuOjE=", "name": name, "displayName": name, "description": "",
              "config": "{}", "sweepName": None, "historyLineCount": 0,
              "project": {"id": "p", "name": "proj", "entity": {"id": "e", "name": "ent"}}}
    return {"data": {
        "viewer": {"id": "v", "entity": "ent", "username": "user", "flags": "{}",
                   "teams": {"edges": []}},
        "upsertBucket": {"bucket": bucket, "inserted": True},
        "serverInfo": {"features": []},
        "model": {"bucket": bucket},
        "project": {"artifact": None, "run": bucket},  # no artifact of that name yet
        "createRunFiles": {"runID": "r", "uploadHeaders": [], "files": []},
        # Every artifact (W&B tables) is "already committed": nothing to upload.
        "createArtifact": {"artifact": {"id": "QXJ0aWZhY3Q6MQ==", "state": "COMMITTED",
                                        "artifactSequence": {"latestArtifact": None}}},
    }}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = _graphql_answer(json.loads(body)) if self.path.startswith("/graphql") else {}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_PUT = do_POST


class FakeWandbServer:
    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
