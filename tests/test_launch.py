"""The entry (ui/launch.py): the port answers with a 503 "starting" page a moment after the
process starts, long before Gradio is imported, and the page turns into the app by itself once
the app serves. The listening socket passes from the page to the app (ui/server.py), so no
connection is refused in between. (That the entry imports nothing heavy is a layering rule:
tests/test_layering.py.)"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.app_process import AppProcess, free_port, query, wait_for_project
from tests.ui_support import TINY_BIAS, link_demo_dataset
from ui.launch import StartingPage, listen

CHROMIUM = Path("/usr/bin/chromium")
FIRST_ANSWER_S = 3.0  # the page target; the starting page needs about 0.2 s here


def test_the_starting_page_answers_503_until_closed_then_frees_the_port():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with StartingPage("127.0.0.1", port) as starting:
        page = httpx.get(url + "/", timeout=5)
        assert page.status_code == 503
        assert page.headers["retry-after"] == "1"
        assert "DiffuBias Studio is starting" in page.text
        assert "location.reload" in page.text  # it turns into the app by itself
        api = httpx.get(url + "/config", timeout=5)
        assert api.status_code == 503 and api.headers["content-type"].startswith("text/plain")
        assert httpx.post(url + "/gradio_api/queue/join", timeout=5).status_code == 503
        assert httpx.head(url + "/", timeout=5).status_code == 503
        starting.close()
        starting.close()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/", timeout=5)
    # the port is free for the app at once, although it served connections (uvicorn and
    # Gradio's probe bind with SO_REUSEADDR)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_the_handed_over_socket_keeps_the_connections_that_arrive_meanwhile():
    """Between the page's last answer and the app's first, a connection waits in the socket's
    backlog instead of being refused (it used to be, for 0.6-0.9 s of every start)."""
    port = free_port()
    starting = StartingPage("127.0.0.1", port)
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 503
    sock = starting.hand_over()
    assert starting.hand_over() is None and starting.server is None
    try:
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        for client in waiting:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(5)
        for client in waiting:  # the app's first accepts: each one that waited
            accepted, _ = sock.accept()
            assert accepted.recv(64).startswith(b"GET / HTTP/1.0")
            accepted.close()
            client.close()
    finally:
        sock.close()


def test_the_app_answers_keep_alive_requests_without_nagles_delay():
    """What the server accepts on the listening socket gets TCP_NODELAY from asyncio, as on a
    socket uvicorn binds itself; without it every keep-alive request of a page (thumbnails,
    the queue) waited ~40 ms on a delayed ACK."""
    sock = listen("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    accepted = []

    class Record(asyncio.Protocol):
        def connection_made(self, transport):
            conn = transport.get_extra_info("socket")
            accepted.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def serve_one():
        server = await asyncio.get_running_loop().create_server(Record, sock=sock)
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            for _ in range(100):
                if accepted:
                    break
                await asyncio.sleep(0.01)
        server.close()

    asyncio.run(serve_one())
    assert accepted and accepted[0] != 0


def test_a_taken_port_gives_no_starting_page_and_no_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        starting = StartingPage("127.0.0.1", port)
        assert starting.server is None and starting.hand_over() is None
        starting.close()


def test_the_app_on_a_taken_port_exits_and_says_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = AppProcess(tmp_path / "ws", "--no-demo", "--port", str(port),
                         log_path=tmp_path / "app.log", wait=False)
        try:
            assert app.process.wait(timeout=120) != 0
        finally:
            app.stop()
    log = (tmp_path / "app.log").read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in log and "--port" in log, log[-2000:]


def test_an_ipv6_loopback_host_gets_the_page_too():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with StartingPage("[::1]", port) as starting:
        assert starting.server is not None
        assert httpx.get(f"http://[::1]:{port}/", timeout=5).status_code == 503


def _first_answer(url: str, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the app exited during start-up"
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.01)
    raise AssertionError(f"nothing answered {url} within {timeout} s")


def _start(tmp_path: Path) -> AppProcess:
    return AppProcess(tmp_path / "ws", "--no-demo", log_path=tmp_path / "app.log", wait=False)


def test_python_app_py_answers_at_once_then_serves_the_app(tmp_path):
    start = time.perf_counter()
    app = _start(tmp_path)
    url, process = app.url, app.process
    try:
        first = _first_answer(url, process)
        first_s = time.perf_counter() - start
        assert first.status_code == 503 and "is starting" in first.text
        assert first_s < FIRST_ANSWER_S, f"the starting page took {first_s:.2f} s"
        while True:  # the app takes over the port: every request is answered, none refused
            assert process.poll() is None, "the app exited during start-up"
            answer = httpx.get(url, timeout=30)
            if answer.status_code == 200:
                break
            assert answer.status_code == 503
            time.sleep(0.01)
        assert "gradio" in answer.text.lower()
        assert httpx.get(url + "config", timeout=30).status_code == 200
    finally:
        app.stop()


def test_a_browser_on_the_starting_page_lands_in_the_app(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (see tests/test_browser.py)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_browser import CHROMIUM_ARGS

    app = _start(tmp_path)
    url, process = app.url, app.process
    try:
        assert _first_answer(url, process).status_code == 503
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            assert "is starting" in page.inner_text("h1")
            # the app's own header, with no click: the starting page reloaded itself
            page.wait_for_selector("#intro", timeout=120_000)
            assert page.url == url
            assert page.locator("text=DiffuBias Studio is starting").count() == 0
            browser.close()
    finally:
        app.stop()


def test_sigterm_during_a_job_stops_the_job_and_exits_cleanly(tmp_path, builtin_cache):
    """`docker stop` or `kill`: the running job is stopped and recorded, and the process exits
    0 (it used to die mid-job; a Ctrl-C exiting under a torch thread could abort)."""
    workspace = tmp_path / "ws"
    link_demo_dataset(builtin_cache, workspace)
    app = AppProcess(workspace, log_path=tmp_path / "app.log")
    try:
        client = app.client()
        project = wait_for_project(client)
        client.submit(project, *{**TINY_BIAS, "biased_epochs": 50}.values(),
                      api_name="/train_biased")
        deadline = time.monotonic() + 120
        while not query(workspace, "SELECT id FROM jobs WHERE kind = 'biased_train' AND "
                                   "status = 'running' AND progress > 0.01"):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        app.process.send_signal(signal.SIGTERM)
        returncode = app.process.wait(timeout=60)
    finally:
        app.kill()
    log = app.log()
    assert returncode == 0, log[-3000:]
    assert "terminate called" not in log
    assert "stopped job(s)" in log
    (job,) = query(workspace, "SELECT status, error FROM jobs WHERE kind = 'biased_train'")
    assert job["status"] == "cancelled"
