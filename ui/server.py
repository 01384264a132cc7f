"""Serving the web app on a socket that already listens, so the port is never refused.

`Blocks.launch` binds the port itself. The entry's starting page (ui/launch.py) therefore had to
let the port go first, and for the second Gradio took to bind it again, a browser or health check
arriving then was refused (and one in flight was reset): measured 0.6-0.9 s on every start.
Instead the starting page hands over its listening socket, still bound and listening.
Connections that arrive meanwhile wait in the socket's backlog and the app answers them.

The app is built with Gradio's documented `mount_gradio_app` (the same `App` that
`Blocks.launch` builds, with the same options) on a FastAPI root, and served by uvicorn in a
thread, as `Blocks.launch` does. Tests serve the app through this module too.
"""

from __future__ import annotations

import socket
import threading
import time

import fastapi
import gradio as gr
import uvicorn


class AppServer:
    """`demo` served on `sock` (bound and listening) in a thread, until `close()`. `options` are
    `mount_gradio_app`'s (app.launch_options)."""

    def __init__(self, demo: gr.Blocks, options: dict, sock: socket.socket,
                 *, start_timeout_s: float = 60.0) -> None:
        root = gr.mount_gradio_app(fastapi.FastAPI(), demo, path="/", **options)
        self._server = uvicorn.Server(uvicorn.Config(root, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="web-server", daemon=True)
        host, port = sock.getsockname()[:2]
        host = "localhost" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        self._thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the web server did not start; see the log above")
            time.sleep(0.005)

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C and SIGTERM raise KeyboardInterrupt here)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.1)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish for up to `timeout_s`, then stop
        (an open event stream of a browser tab would otherwise keep it waiting). Idempotent."""
        self._server.should_exit = True
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=1.0)
