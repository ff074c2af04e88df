"""The plumbing every emulated HTTP endpoint shares: a threaded HTTP server on 127.0.0.1 (a free port unless told
otherwise) served by a daemon thread, started and stopped by its owner or used as a context manager."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    """Subclasses give the request handler (`_handler`) and the serving thread's name; `_stopping` is set when
    stop() begins, for handlers that hold a request (a delay, a hang) to wake and give up."""

    thread_name = "loopback"

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self, port: int = 0) -> Self:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, f"{type(self).__name__} is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """`http://127.0.0.1:{port}`, the server's root."""
        return f"http://127.0.0.1:{self.port}"
