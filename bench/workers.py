"""`hubmirror serve --workers 1` vs `--workers 2` vs nginx (sendfile, its default worker count as
Debian ships it: `auto`, one per core), serving the same cached file, in one run.

Prints HEAD requests per second on a cached file's /resolve URL (16 keep-alive connections, from
ApacheBench if installed, else bench/_common.py's Python client), and warm GET throughput for one
stream and for 16 parallel curl clients; each as the best of N rounds, the three servers taking
turns in every round; ratios against nginx and workers 2 against workers 1. Also how evenly the two
workers shared the CPU during the HEAD run. Not a pass/fail test: the load generator runs on the
same two cores as the servers, and this machine is shared (absolute numbers vary by +-30%).

    ./dev bench workers [--size-mib 1024] [--repeat 3] [--nginx-workers auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import (
    Nginx,
    Server,
    ab_head_rps,
    best_throughput,
    cached_file,
    fmt_rate,
    head_rps,
)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _show(row: str, value: float) -> str:
    return f"{value:.0f}" if row.startswith("HEAD") else fmt_rate(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept")
    ap.add_argument("--nginx-workers", default="auto")
    args = ap.parse_args()

    if shutil.which("ab"):
        rps: Callable[[str, int, float], float] = ab_head_rps
        generator = "ApacheBench"
    else:
        print("ab not found (apt-get install -y apache2-utils): HEADs from the Python client", file=sys.stderr)
        rps = head_rps
        generator = "Python aiohttp client"

    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    servers: list[Server | Nginx] = []
    try:
        data, www = cached_file(tmp, args.size_mib)
        w1 = Server(data, "--offline")
        servers.append(w1)
        w2 = Server(data, "--offline", "--workers", "2")
        servers.append(w2)
        ng = Nginx(www, args.nginx_workers)
        servers.append(ng)
        path = "/bench/big/resolve/main/model.safetensors"
        urls = {"workers 1": w1.url + path, "workers 2": w2.url + path, "nginx": ng.url + "/model.safetensors"}
        nginx_procs = len(_children(ng.proc.pid))
        workers2 = _children(w2.proc.pid)
        assert len(workers2) == 2, workers2

        for url in urls.values():  # warm-up: page cache, connections, first-request paths
            best_throughput(url, 1, 1)
            rps(url, 16, 1.0)

        best: dict[str, dict[str, float]] = {row: dict.fromkeys(urls, 0.0) for row in
                                             ("HEAD req/s (16 conns)", "single stream", "16 clients")}
        split = [0.0, 0.0]
        for _ in range(args.repeat):
            for name, url in urls.items():
                before = [_cpu_seconds(p) for p in workers2]
                r = rps(url, 16, 3.0)
                if name == "workers 2":
                    for i, p in enumerate(workers2):
                        split[i] += _cpu_seconds(p) - before[i]
                best["HEAD req/s (16 conns)"][name] = max(best["HEAD req/s (16 conns)"][name], r)
                best["single stream"][name] = max(best["single stream"][name], best_throughput(url, 1, 1))
                best["16 clients"][name] = max(best["16 clients"][name], best_throughput(url, 16, 1))

        print(f"\nserving a cached {args.size_mib} MiB file over loopback, best of {args.repeat} rounds; "
              f"HEADs from {generator}; nginx worker_processes {args.nginx_workers} ({nginx_procs} processes)")
        print(f"{'':24}{'workers 1':>12}{'workers 2':>12}{'nginx':>12}{'w1/nginx':>10}{'w2/nginx':>10}{'w2/w1':>8}")
        for row, vals in best.items():
            one, two, ref = vals["workers 1"], vals["workers 2"], vals["nginx"]
            print(f"{row:24}{_show(row, one):>12}{_show(row, two):>12}{_show(row, ref):>12}"
                  f"{one / ref:>10.2f}{two / ref:>10.2f}{two / one:>8.2f}")
        total = sum(split) or 1.0
        print("\nworkers 2, CPU seconds per worker over the HEAD runs: "
              + " / ".join(f"{s:.1f} ({s / total:.0%})" for s in split))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
