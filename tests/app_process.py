"""The app as a real process, for the fault and load tests: `python app.py` on a free loopback
port, killed with SIGKILL or stopped, and a read-only view of its database for assertions."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from gradio_client import Client

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120
CLIENT_TIMEOUT_S = 60  # see AppProcess.client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppProcess:
    """`python app.py --workspace WORKSPACE ARGS...` in its own process, logging to a file;
    returns once the app's page is served (at once with `wait=False`)."""

    def __init__(self, workspace: Path, *args: str, log_path: Path, wait: bool = True) -> None:
        self.workspace = Path(workspace)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = Path(log_path)
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "app.py", "--workspace", str(self.workspace), "--port",
                 str(self.port), *args], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT)
        if wait:
            self._wait_until_served()

    def _wait_until_served(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the app exited with {self.process.returncode}:\n"
                                     f"{self.log()[-3000:]}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"the app did not serve within {START_TIMEOUT_S} s")

    def client(self) -> Client:
        # CPython holds the GIL while it loads a native library, so for a few seconds after a
        # start (the warm-up loading torch and OpenCV) every request waits; measured up to 6 s
        # on a busy machine, beyond the client's 5 s default
        return Client(self.url, verbose=False, download_files=False,
                      httpx_kwargs={"timeout": CLIENT_TIMEOUT_S})

    def kill(self) -> None:
        """SIGKILL: no handler, no clean-up, like a crash or the OOM killer."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def wait_for_project(client: Client, timeout: float = START_TIMEOUT_S) -> int:
    """The project the page opens (the demo project, once it is prepared)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, project_id, _ = client.predict(api_name="/open_page")
        if project_id is not None:
            return int(project_id)
        time.sleep(0.3)
    raise AssertionError("no project appeared")


def read_db(workspace: Path) -> sqlite3.Connection:
    """A read-only connection to the app's database (WAL: reads never block its writes)."""
    path = Path(workspace) / "diffubias.sqlite"
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    return connection


def query(workspace: Path, sql: str, *params) -> list[sqlite3.Row]:
    connection = read_db(workspace)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()
