"""Test helpers: free ports, a hubmirror server in a subprocess, real clients in subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import backends

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def hubmirror_env(data: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a hubmirror process working on `data`: this one's, then the session's
    backend (tests/backends.py: its database and bucket prefix, with --backend=pg-s3), then `env`.
    A test whose `env` names its own database or store (HUBMIRROR_DATABASE_URL, HUBMIRROR_STORE_URL)
    has chosen its backend: the session's is left out."""
    env = env or {}
    own = "HUBMIRROR_DATABASE_URL" in env or "HUBMIRROR_STORE_URL" in env
    return {**os.environ, **({} if own else backends.current().env(data)), **env}


class Server:
    """`hubmirror serve` as a real process on a free port, on the session's backend (hubmirror_env)."""

    def __init__(self, data: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "hubmirror", "serve", "--data", str(data), "--port", str(self.port), *args]
        self._fh = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=hubmirror_env(data, env)
        )
        try:
            wait_http(self.url + "/health", proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(self.log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


def run_client(
    code: str, endpoint: str, hf_home: Path, *, xet: bool = True, env: dict[str, str] | None = None, timeout: int = 300
) -> Any:
    """Run `code` with the real client libraries in a fresh interpreter pointed at `endpoint`.

    The snippet reports by calling `out(value)`; its JSON comes back. Exceptions come back as
    {"error": class name, "message": str}.
    """
    prelude = textwrap.dedent(
        """
        import json, sys, traceback
        def out(v):
            print("@@RESULT@@" + json.dumps(v, default=str))
        try:
        """
    )
    body = textwrap.indent(textwrap.dedent(code), "    ")
    epilogue = textwrap.dedent(
        """
        except Exception as e:
            traceback.print_exc()
            out({"error": type(e).__name__, "message": str(e), "mro": [c.__name__ for c in type(e).__mro__]})
        """
    )
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
    }
    full_env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_UPDATE_DOWNLOAD_COUNTS="0",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if not xet:
        full_env["HF_HUB_DISABLE_XET"] = "1"
    full_env.update(env or {})
    p = subprocess.run(
        [sys.executable, "-c", prelude + body + epilogue],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=str(hf_home.parent),
    )
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@") :])
    raise AssertionError(f"client produced no result (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.headers.get('x-error-code')} {self.body[:200]!r}>"


def raw(url: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> Reply:
    """Send `path` exactly as given (no client-side normalisation or quoting)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()
