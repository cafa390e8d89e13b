"""Serving a cached file: hubmirror vs nginx (sendfile) on the same bytes, in one run.

Prints throughput for one stream and for 16 parallel clients, the ratio hubmirror/nginx
(goal >= 0.9), and HEAD /resolve latency p50/p99 and requests per second for a cached file
(vs a HEAD of the static file on nginx). Then the same server with access control on (no
anonymous reads, a rule naming a group, a client sending a token) against off: HEAD requests
per second (goal: at most 10% slower) and single-stream throughput (goal: at most 2% slower).
Not a pass/fail test: this machine is shared and absolute numbers vary by +-30%; compare the
ratios.

    ./dev bench serve [--size-mib 1024] [--nginx-workers auto]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    Nginx,
    Server,
    best_throughput,
    cached_file,
    fmt_rate,
    head_latencies,
    head_rps,
    pct,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--nginx-workers", default="auto")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        data, www = cached_file(tmp, args.size_mib)
        hm = Server(data)
        ng = Nginx(www, args.nginx_workers)
        try:
            hm_url = f"{hm.url}/bench/big/resolve/main/model.safetensors"
            ng_url = f"{ng.url}/model.safetensors"
            best_throughput(hm_url, 1, 1)  # warm the page cache
            print(f"\nserving a cached {args.size_mib} MiB file over loopback (best of 3)")
            print(f"{'':24}{'hubmirror':>14}{'nginx':>14}{'ratio':>8}")
            for clients in (1, 16):
                h = best_throughput(hm_url, clients)
                n = best_throughput(ng_url, clients)
                label = "single stream" if clients == 1 else f"{clients} clients"
                print(f"{label:24}{fmt_rate(h):>14}{fmt_rate(n):>14}{h / n:>8.2f}")
            lat_h = head_latencies(hm_url)
            lat_n = head_latencies(ng_url)
            print(f"\nHEAD latency, one keep-alive connection ({len(lat_h)} requests)")
            print(f"{'':24}{'hubmirror':>14}{'nginx':>14}")
            for p in (50, 99):
                print(f"{'p' + str(p):24}{pct(lat_h, p) * 1e3:>11.2f} ms{pct(lat_n, p) * 1e3:>11.2f} ms")
            rps_h = head_rps(hm_url)
            rps_n = head_rps(ng_url)
            print(f"{'HEAD req/s (16 conns)':24}{rps_h:>14.0f}{rps_n:>14.0f}{rps_h / rps_n:>8.2f}")
        finally:
            hm.stop()
            ng.stop()
        access_on_vs_off(data, args.size_mib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def access_on_vs_off(data: Path, size_mib: int) -> None:
    """The same data dir served twice, in turns: without access control, and with it."""
    import json
    import subprocess

    hm_cli = [sys.executable, "-m", "hubmirror"]
    subprocess.run([*hm_cli, "user", "add", "bench", "--group", "ml", "--data", str(data)], check=True,
                   capture_output=True)
    out = subprocess.run([*hm_cli, "token", "create", "bench", "--user", "bench", "--json", "--data", str(data)],
                         check=True, capture_output=True, text=True).stdout
    auth = {"Authorization": "Bearer " + json.loads(out)["token"]}
    conf = data.parent / "access.toml"
    conf.write_text('[access]\nanonymous = "none"\n[[access.rules]]\nrepos = ["bench/*"]\nread = ["group:ml"]\n')
    print("\naccess control off vs on (a token, a rule naming its group, anonymous reads refused)")
    print(f"{'':24}{'off':>14}{'on':>14}{'on/off':>8}")
    rows: dict[str, list[float]] = {"HEAD req/s (16 conns)": [], "single stream": []}
    for args, headers in (((), None), (("--config", str(conf)), auth)):
        srv = Server(data, *args)
        try:
            url = f"{srv.url}/bench/big/resolve/main/model.safetensors"
            head_rps(url, headers=headers, seconds=1.0)  # warm-up
            rows["HEAD req/s (16 conns)"].append(head_rps(url, headers=headers))
            rows["single stream"].append(best_throughput(url, 1, headers=headers))
        finally:
            srv.stop()
    off, on = rows["HEAD req/s (16 conns)"]
    print(f"{'HEAD req/s (16 conns)':24}{off:>14.0f}{on:>14.0f}{on / off:>8.2f}   (goal >= 0.90)")
    off, on = rows["single stream"]
    print(f"{'single stream':24}{fmt_rate(off):>14}{fmt_rate(on):>14}{on / off:>8.2f}   (goal >= 0.98)")


if __name__ == "__main__":
    main()
