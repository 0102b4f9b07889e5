"""A real OpenAI-compatible chat-completions server on 127.0.0.1, scripted per request, for tests and benchmarks.

The server speaks `POST /v1/chat/completions` and answers with OpenAI-shaped JSON (`choices`, `usage`), so the real
`openai` client, its HTTP stack, our retries, concurrency limit and cache are all exercised. What it answers is
decided by a *responder*: a function of the request that returns a `Reply` (or a plain string, the reply's
content). Every request is recorded, and the server counts the most requests it had in flight at once.

Example:

```python
from loopback_server import LoopbackServer, Reply


def responder(request):
    if request.attempt == 0:  # the first time this exact conversation is seen
        return Reply(status=429)
    return "Rating: [[7]]"


with LoopbackServer(responder) as server:
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
    ...
    assert len(server.requests) == 2
```
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server sends back for one request.

    Args:
        content (`str` or `None`, *optional*): the assistant message's content (`None` sends `"content": null`).
        status (`int`, *optional*, defaults to `200`): HTTP status; anything but 200 sends an OpenAI-style error body.
        delay (`float`, *optional*, defaults to `0.0`): seconds to wait before answering (a slow server).
        raw_body (`str` or `None`, *optional*): send this body verbatim instead of JSON built from the other fields
            (a malformed reply).
        usage (`dict` or `None`, *optional*): the `usage` object; by default whitespace-separated words are counted.
        headers (`dict`, *optional*): extra response headers, e.g. `{"retry-after": "0"}`.
    """

    content: str | None = ""
    status: int = 200
    delay: float = 0.0
    raw_body: str | None = None
    usage: dict[str, int] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    """One request as the responder and the tests see it.

    `index` is the arrival order over the server's life; `attempt` counts earlier requests with the same model,
    messages and sampling options (0 for the first), which scripts "fail, then succeed" per conversation. `raw` is the
    body exactly as it came over the wire, to compare two clients' requests byte for byte.
    """

    body: dict[str, Any]
    headers: dict[str, str]
    index: int
    attempt: int
    raw: bytes = b""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def user_content(self) -> str:
        """The content of the last user message."""
        return next(m["content"] for m in reversed(self.messages) if m.get("role") == "user")


Responder = Callable[[Request], "Reply | str"]


def _word_usage(request: Request, content: str | None) -> dict[str, int]:
    prompt_tokens = sum(len(str(message.get("content", "")).split()) for message in request.messages)
    completion_tokens = len((content or "").split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) that answers chat completions with `responder`.

    Use it as a context manager. `base_url` is what an OpenAI client takes (`http://127.0.0.1:PORT/v1`);
    `requests` lists every `Request` received (thread-safe); `max_in_flight` is the peak number of requests being
    answered at the same time.
    """

    def __init__(self, responder: Responder):
        self.responder = responder
        self.requests: list[Request] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _record(self, raw: bytes, headers: dict[str, str]) -> Request:
        body = json.loads(raw)
        key = json.dumps({k: v for k, v in body.items() if k != "stream"}, sort_keys=True)
        with self._lock:
            request = Request(body=body, headers=headers, index=len(self.requests), attempt=self._seen[key], raw=raw)
            self._seen[key] += 1
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        return request

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}), {})
                    return
                request = server._record(raw, {k.lower(): v for k, v in self.headers.items()})
                try:
                    reply = server.responder(request)
                    if isinstance(reply, str):
                        reply = Reply(content=reply)
                    time.sleep(reply.delay)
                    self._send(reply.status, self._body(request, reply), reply.headers)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass
                finally:
                    server._done()

            def _body(self, request: Request, reply: Reply) -> str:
                if reply.raw_body is not None:
                    return reply.raw_body
                if reply.status != 200:
                    return json.dumps({"error": {"message": f"scripted status {reply.status}", "type": "loopback"}})
                return json.dumps(
                    {
                        "id": f"chatcmpl-loopback-{request.index}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": request.body.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": reply.usage or _word_usage(request, reply.content),
                    }
                )

            def _send(self, status: int, body: str, headers: dict[str, str]) -> None:
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
