"""The program's entry (`python app.py`, `diffubias-studio`): read the command line, answer the
port at once with a "starting" page, then import the app (Gradio and the tabs take seconds to
import) and hand the listening socket over to it (ui/server.py), so the port is never refused.

Only the standard library is imported here, so the starting page answers a fraction of a second
after the process starts. It answers every request with 503 Service Unavailable (health checks
and API clients wait, as they should) and a small page that reloads itself once the real page
answers. The real page's own start time is unchanged and reported beside it
(docs/BENCHMARKS.md#web-app-apppy).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("diffubias.app")

STARTING_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DiffuBias Studio is starting</title>
<style>
body { font-family: system-ui, sans-serif; display: grid; place-items: center; height: 90vh;
       color: #1f2937; }
main { text-align: center; }
.bar { width: 240px; height: 6px; border-radius: 3px; background: #e5e7eb; overflow: hidden;
       margin: 1em auto; }
.bar div { width: 40%; height: 100%; background: #2563eb; animation: slide 1.2s infinite; }
@keyframes slide { from { margin-left: -40%; } to { margin-left: 100%; } }
#late { display: none; color: #b45309; }
</style></head>
<body><main>
<h1>DiffuBias Studio is starting</h1>
<div class="bar"><div></div></div>
<p>Loading the web app and opening the workspace; this page opens it by itself
(<span id="seconds">0</span> s).</p>
<p id="late">Still starting after a minute: see the terminal that runs the app for an error.</p>
</main>
<script>
const started = Date.now();
async function poll() {
  const seconds = Math.round((Date.now() - started) / 1000);
  document.getElementById("seconds").textContent = seconds;
  if (seconds >= 60) document.getElementById("late").style.display = "block";
  try {
    const answer = await fetch(location.href, {cache: "no-store"});
    if (answer.ok) { location.reload(); return; }
  } catch (error) { /* the port is changing hands: try again */ }
  setTimeout(poll, 500);
}
setTimeout(poll, 500);
</script></body></html>
"""


class _StartingHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        page = self.path.split("?")[0] == "/"
        content = (STARTING_HTML if page else "DiffuBias Studio is starting; try again in a "
                   "second.\n").encode()
        self.send_response(503)
        self.send_header("Content-Type", f"text/{'html' if page else 'plain'}; charset=utf-8")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Retry-After", "1")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the http.server API)
        pass  # the app's own log says when it serves


BACKLOG = 128  # connections that may wait while the socket changes hands


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening (port 0: a free one). OSError where the
    port is taken or the host unknown."""
    host = host.strip("[]")
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    # Said to be TCP (create_server leaves the protocol 0): the connections it accepts take the
    # listener's protocol, and asyncio turns Nagle's algorithm off only on a socket that says
    # TCP. Without it each keep-alive request waited on a delayed ACK: 45 ms a thumbnail
    # against 5 ms (bench/app.py's 200-thumbnail fetch took 8.9 s)
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())


class StartingPage:
    """The 503 "starting" page on (host, port) until `hand_over()` gives its listening socket to
    the app (or `close()` frees the port). Where the port cannot be bound (taken, or an unknown
    host name) there is no page; the app binds the port itself and reports the problem."""

    def __init__(self, host: str, port: int) -> None:
        self.server: ThreadingHTTPServer | None = None
        try:
            sock = listen(host, port)
        except OSError as error:
            log.info("no starting page on %s:%s (%s)", host, port, error)
            return
        self.server = ThreadingHTTPServer(sock.getsockname()[:2], _StartingHandler,
                                          bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="starting-page", daemon=True)
        self._thread.start()

    def hand_over(self) -> socket.socket | None:
        """Stop answering and return the listening socket, still bound and listening: the
        connections that arrive from now on wait in its backlog until the app accepts them
        (a request already accepted still gets its 503 on its own thread). None where there is
        no page."""
        if self.server is None:
            return None
        self.server.shutdown()
        self._thread.join(timeout=5)
        sock, self.server = self.server.socket, None
        return sock

    def close(self) -> None:
        """Stop answering and free the port (idempotent)."""
        sock = self.hand_over()
        if sock is not None:
            sock.close()

    def __enter__(self) -> StartingPage:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- the command line ---------------------------------------------------------------------------

DESCRIPTION = ("DiffuBias Studio, the web app: `python app.py` serves the audit workflow at "
               "http://127.0.0.1:7860 with a ready demo project, offline and without a GPU.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    installed = Path(sys.argv[0]).name == "diffubias-studio"
    parser = argparse.ArgumentParser(prog="diffubias-studio" if installed else "python app.py",
                                     description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 for every interface; then use "
                             "--auth) (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    parser.add_argument("--auth", default=os.environ.get("DIFFUBIAS_AUTH"),
                        help="user:password required to open the app (or $DIFFUBIAS_AUTH)")
    parser.add_argument("--workspace", type=Path, default=Path("workspace"),
                        help="folder of the database and every file the app writes "
                             "(default: %(default)s)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="a folder whose sub-folders (datasets) the Dataset tab may open")
    parser.add_argument("--max-upload", default="2gb",
                        help="largest .zip a browser may upload (default: %(default)s)")
    parser.add_argument("--no-demo", action="store_true",
                        help="do not create the demo project on an empty workspace")
    return parser.parse_args(argv)


def exposure_warning(args: argparse.Namespace) -> str | None:
    """A warning when the app listens beyond this machine without a password; None otherwise."""
    if args.auth or is_loopback(args.host):
        return None
    return (f"listening on {args.host}: anyone who can reach this machine can open the app, "
            "read every project and run jobs; add --auth user:password (or set "
            "DIFFUBIAS_AUTH), or keep the default --host 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def main(argv: list[str] | None = None) -> None:
    """Parse, warn, answer the port, then import the composition root (`app.py`) and serve."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warning = exposure_warning(args)
    if warning:
        log.warning(warning)
    # `docker stop` and `kill` send SIGTERM: close as on Ctrl-C (the running job stops and is
    # recorded), instead of dying mid-job
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with StartingPage(args.host, args.port) as starting:
            import app  # Gradio, the tabs and the store: seconds

            app.serve(args, starting)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
