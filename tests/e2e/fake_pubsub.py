"""A loopback fake of the Pub/Sub REST surface that `cli.py
replay-dead-letters` uses (the Pub/Sub emulator is a Java gcloud component
and is not installed here): topics and subscriptions in memory,
`subscriptions.get`, `subscriptions.pull` (leases messages), `acknowledge`,
`modifyAckDeadline` (0 hands a message back), and `topics.publish`, which
fans a message out to the topic's subscriptions as Pub/Sub does. JSON
bodies and paths as in the v1 REST reference; the CLI under test is the real
one, only the server is fake."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakePubSub:
    def __init__(self) -> None:
        self.subscriptions: dict[str, str] = {}  # subscription path -> topic path
        self.queues: dict[str, list[dict[str, Any]]] = {}  # subscription path -> undelivered messages
        self.leased: dict[str, tuple[str, dict[str, Any]]] = {}  # ackId -> (subscription, message)
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.fail_publish = 0  # answer 503 to this many publishes
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def subscribe(self, subscription: str, topic: str) -> None:
        self.subscriptions[subscription] = topic
        self.queues.setdefault(subscription, [])

    def put(self, subscription: str, message: dict[str, Any]) -> None:
        self.queues[subscription].append({"messageId": str(next(self._ids)), **message})

    def _publish(self, topic: str, messages: list[dict[str, Any]]) -> list[str]:
        ids = []
        for message in messages:
            mid = str(next(self._ids))
            stored = {"messageId": mid, "data": message.get("data", ""),
                      "attributes": message.get("attributes", {}), "publishTime": "2026-01-01T00:00:00Z"}
            self.published.append((topic, stored))
            for sub, sub_topic in self.subscriptions.items():
                if sub_topic == topic:
                    self.queues[sub].append(dict(stored))
            ids.append(mid)
        return ids

    def _answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if method == "GET" and path in self.subscriptions:
                return 200, {"name": path, "topic": self.subscriptions[path]}
            name, _, verb = path.partition(":")
            if verb == "publish":
                if self.fail_publish:
                    self.fail_publish -= 1
                    return 503, {"error": {"code": 503, "status": "UNAVAILABLE"}}
                return 200, {"messageIds": self._publish(name, body["messages"])}
            if name not in self.queues:
                return 404, {"error": {"code": 404, "status": "NOT_FOUND", "message": f"{name} not found"}}
            if verb == "pull":
                out = []
                while self.queues[name] and len(out) < int(body.get("maxMessages", 1)):
                    message = self.queues[name].pop(0)
                    ack_id = f"ack-{next(self._ids)}"
                    self.leased[ack_id] = (name, message)
                    out.append({"ackId": ack_id, "message": message})
                return 200, {"receivedMessages": out} if out else {}
            if verb == "acknowledge":
                for ack_id in body["ackIds"]:
                    self.leased.pop(ack_id)
                return 200, {}
            if verb == "modifyAckDeadline" and body.get("ackDeadlineSeconds") == 0:
                for ack_id in body["ackIds"]:
                    sub, message = self.leased.pop(ack_id)
                    self.queues[sub].append(message)
                return 200, {}
            return 400, {"error": {"code": 400, "message": f"unsupported {method} {path}"}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                path = self.path.removeprefix("/v1/")
                status, answer = fake._answer(method, path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
