"""Pull-through cost, in one run.

The upstream is another hubmirror serving the file from disk (zero-copy), so the comparison is
"download directly from the upstream" vs "download through a cold hubmirror that fills its
cache while it streams". Prints: cold-miss throughput and time to first byte through the proxy
vs direct (overhead ratio, goal <= 1.1), warm-hit throughput, and upstream bytes / file size for
16 concurrent cold clients (goal <= 1.05). Not a pass/fail test; absolute numbers on this shared
machine vary by +-30%, read the ratios.

    ./dev bench proxy [--size-mib 256] [--clients 16]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import Server, fmt_rate, need

from hubmirror.catalog import Catalog
from hubmirror.ingest import import_folder
from hubmirror.model.names import RepoRef, RepoType
from hubmirror.store import LocalBlobStore

PATH = "/bench/big/resolve/main/model.safetensors"


def curl(url: str, out: str = "/dev/null") -> tuple[float, float, int]:
    """(seconds total, seconds to first byte, bytes); `out` is where the client writes the body"""
    res = subprocess.run(
        [need("curl", "apt-get install -y curl"), "-s", "-o", out, "-w",
         "%{time_total} %{time_starttransfer} %{size_download}", url],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    if out != "/dev/null":
        os.unlink(out)
    return float(res[0]), float(res[1]), int(res[2])


def served_bytes(server: Server) -> float:
    body = urllib.request.urlopen(server.url + "/metrics").read().decode()
    m = re.search(r"^hubmirror_served_bytes_total ([0-9.e+]+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    env = {"HUBMIRROR_PROXY__MIN_FREE": "0"}
    try:
        src = tmp / "src"
        src.mkdir()
        with open(src / "model.safetensors", "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1 << 20))
        up_data = tmp / "upstream"
        up_data.mkdir()
        cat = Catalog(f"sqlite:///{up_data / 'catalog.sqlite3'}")
        cat.migrate()
        import_folder(cat, LocalBlobStore(up_data / "blobs"), RepoRef(RepoType.MODEL, "bench/big"), src)
        cat.close()
        shutil.rmtree(src)
        upstream = Server(up_data, env=env)
        try:
            curl(upstream.url + PATH)  # page cache warm on the upstream side
            best = lambda runs: min(runs, key=lambda r: r[0])  # noqa: E731
            print(f"\npull-through of a {args.size_mib} MiB file over loopback (best of {args.repeat})")
            for sink, label in (("/dev/null", "client discards the body"), (str(tmp / "client.out"),
                                                                            "client writes the body to disk")):
                direct = [curl(upstream.url + PATH, sink) for _ in range(args.repeat)]
                cold, warm = [], []
                for i in range(args.repeat):
                    proxy = Server(tmp / f"proxy{i}", "--upstream", upstream.url, env=env)
                    try:
                        cold.append(curl(proxy.url + PATH, sink))
                        warm.append(curl(proxy.url + PATH, sink))
                    finally:
                        proxy.stop()
                        shutil.rmtree(tmp / f"proxy{i}")
                d, c, w = best(direct), best(cold), best(warm)
                assert d[2] == c[2] == w[2] == size
                print(f"\n{label}:")
                print(f"{'':30}{'throughput':>14}{'first byte':>14}")
                print(f"{'direct from upstream':30}{fmt_rate(size / d[0]):>14}{d[1] * 1e3:>11.1f} ms")
                print(f"{'cold miss through hubmirror':30}{fmt_rate(size / c[0]):>14}{c[1] * 1e3:>11.1f} ms")
                print(f"{'warm hit through hubmirror':30}{fmt_rate(size / w[0]):>14}{w[1] * 1e3:>11.1f} ms")
                print(f"cold-miss time / direct time: {c[0] / d[0]:.2f} (goal <= 1.1)")

            proxy = Server(tmp / "proxy-n", "--upstream", upstream.url, env=env)
            try:
                before = served_bytes(upstream)
                t0 = time.perf_counter()
                procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", proxy.url + PATH],
                                          stdout=subprocess.PIPE) for _ in range(args.clients)]
                sizes = [int(p.communicate()[0]) for p in procs]
                secs = time.perf_counter() - t0
                pulled = served_bytes(upstream) - before
            finally:
                proxy.stop()
            assert all(s == size for s in sizes), sizes
            print(f"\n{args.clients} concurrent cold clients: {fmt_rate(size * args.clients / secs)} to clients, "
                  f"upstream bytes / file size = {pulled / size:.3f} (goal <= 1.05)")
        finally:
            upstream.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
