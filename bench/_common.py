"""Shared benchmark plumbing: servers on free ports, curl-based throughput, HEAD latency."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import Server, free_port, wait_http  # noqa: E402


def need(tool: str, hint: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if not path:
        sys.exit(f"{tool} is required for this benchmark: {hint}")
    return path


class Nginx:
    """nginx serving `root` as static files with sendfile, as a reference in the same run."""

    def __init__(self, root: Path, workers: str = "auto") -> None:
        binary = need("nginx", "apt-get install -y nginx-light")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""
user root;
worker_processes {workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {self.dir};
  proxy_temp_path {self.dir};
  fastcgi_temp_path {self.dir};
  uwsgi_temp_path {self.dir};
  scgi_temp_path {self.dir};
  server {{
    listen 127.0.0.1:{self.port};
    root {root};
  }}
}}
""")
        self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(self.dir)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/", timeout=1)
            except urllib.error.HTTPError:
                return  # 403/404: it is up
            except OSError:
                time.sleep(0.05)
                continue
            return
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def curl_download(url: str, clients: int = 1, headers: dict[str, str] | None = None) -> tuple[float, int]:
    """Download `url` with `clients` parallel curl processes; return (seconds, total bytes)."""
    curl = need("curl", "apt-get install -y curl")
    extra = [x for k, v in (headers or {}).items() for x in ("-H", f"{k}: {v}")]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([curl, "-s", "-f", *extra, "-o", "/dev/null", "-w", "%{size_download}", url],
                         stdout=subprocess.PIPE)
        for _ in range(clients)
    ]
    total = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"curl failed on {url}")
        total += int(out)
    return time.perf_counter() - t0, total


def best_throughput(url: str, clients: int, repeat: int = 3, headers: dict[str, str] | None = None) -> float:
    """Best-of-N aggregate throughput in bytes/s (best-of filters out noise from other tenants)."""
    best = 0.0
    for _ in range(repeat):
        secs, total = curl_download(url, clients, headers)
        best = max(best, total / secs)
    return best


def head_latencies(url: str, n: int = 2000) -> list[float]:
    """Sequential HEADs over one keep-alive connection; seconds each."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    path = u.path
    out = []
    for _ in range(50):  # warm-up
        conn.request("HEAD", path)
        conn.getresponse().read()
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("HEAD", path)
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
    conn.close()
    return out


def head_rps(url: str, concurrency: int = 16, seconds: float = 3.0, headers: dict[str, str] | None = None) -> float:
    import aiohttp

    async def run() -> int:
        done = 0
        stop = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers=headers) as s:

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < stop:
                    async with s.head(url) as r:
                        assert r.status == 200
                    done += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    t0 = time.monotonic()
    n = asyncio.run(run())
    return n / (time.monotonic() - t0)


def ab_head_rps(url: str, concurrency: int = 16, seconds: float = 3.0) -> float:
    """HEAD requests per second from ApacheBench (keep-alive): a load generator in C, which on two
    cores leaves the server more of the CPU than `head_rps`'s Python client does."""
    ab = need("ab", "apt-get install -y apache2-utils")
    out = subprocess.run([ab, "-k", "-i", "-q", "-c", str(concurrency), "-t", str(seconds), "-n", "100000000", url],
                         capture_output=True, text=True, check=True).stdout
    failed = re.search(r"^Failed requests:\s+(\d+)", out, re.MULTILINE)
    non2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.MULTILINE)
    if (failed and int(failed.group(1))) or non2xx:
        raise RuntimeError(f"ab saw failed requests on {url}:\n{out}")
    m = re.search(r"^Requests per second:\s+([0-9.]+)", out, re.MULTILINE)
    assert m, out
    return float(m.group(1))


def cached_file(tmp: Path, size_mib: int, repo_id: str = "bench/big") -> tuple[Path, Path]:
    """A data dir holding `repo_id` with one random model.safetensors of `size_mib` MiB, and a
    folder for nginx with the very same inode at /model.safetensors: (data, www)."""
    from hubmirror.catalog import Catalog
    from hubmirror.ingest import import_folder
    from hubmirror.model.names import RepoRef, RepoType
    from hubmirror.store import LocalBlobStore

    src = tmp / "src"
    src.mkdir()
    big = src / "model.safetensors"
    print(f"writing a {size_mib} MiB file ...", file=sys.stderr)
    sha = hashlib.sha256()
    with open(big, "wb") as fh:
        for _ in range(size_mib):
            chunk = os.urandom(1 << 20)
            sha.update(chunk)
            fh.write(chunk)
    data = tmp / "data"
    data.mkdir()
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    catalog.migrate()
    store = LocalBlobStore(data / "blobs")
    import_folder(catalog, store, RepoRef(RepoType.MODEL, repo_id), src)
    catalog.close()
    blob = store.local_path(sha.hexdigest())
    assert blob is not None and blob.exists()
    www = tmp / "www"
    www.mkdir()
    os.link(blob, www / "model.safetensors")  # nginx serves the very same inode
    big.unlink()
    return data, www


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def fmt_rate(bps: float) -> str:
    return f"{bps / 1e9:.2f} GB/s"


__all__ = ["Nginx", "Server", "ab_head_rps", "best_throughput", "cached_file", "fmt_rate", "head_latencies", "head_rps",
           "need", "pct", "wait_http"]
