"""A real webhook receiver on 127.0.0.1 for the outbox tests: records every request (headers and
body) and answers 200, or fails a given number of times first, or always (a dead receiver)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from tests.support.json_http import JsonHandler


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class ReceiverState:
    fail_next: int = 0
    always_fail: bool = False
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def successes(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.answered < 300]


class Receiver:
    def __init__(self) -> None:
        self.state = ReceiverState()
        state = self.state

        class Handler(JsonHandler):
            content_type = "application/json"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with state.lock:
                    failing = state.always_fail or state.fail_next > 0
                    if state.fail_next > 0:
                        state.fail_next -= 1
                    status = 503 if failing else 200
                    state.requests.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                self._send(status, {"ok": not failing})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
