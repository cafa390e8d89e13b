"""The real huggingface_hub client (with hf_xet installed, and with HF_HUB_DISABLE_XET=1)
downloading through a real hubmirror server."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Fixture
from helpers import Server, run_client

pytestmark = pytest.mark.e2e

XET = [pytest.param(True, id="xet"), pytest.param(False, id="no-xet")]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("xet", XET)
def test_hf_hub_download_every_kind_of_file_and_revision(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    fx = fixture_data
    res = run_client(
        """
        import hashlib
        from huggingface_hub import hf_hub_download
        def h(p): return hashlib.sha256(open(p, "rb").read()).hexdigest()
        r = {}
        for name in ["config.json", "weights.bin", "big.dat", "sub/dir/file.txt", "with space #1.txt", "données/é.txt", "empty.txt"]:
            r[name] = h(hf_hub_download("acme/tiny", name))
        r["tag"] = open(hf_hub_download("acme/tiny", "config.json", revision="v1.0")).read()
        r["sha"] = open(hf_hub_download("acme/tiny", "config.json", revision=COMMIT_V1)).read()
        r["slash"] = open(hf_hub_download("acme/tiny", "config.json", revision="feature/x")).read()
        r["pr"] = open(hf_hub_download("acme/tiny", "config.json", revision="refs/pr/1")).read()
        r["single"] = open(hf_hub_download("tinygpt", "config.json")).read()
        r["dataset"] = open(hf_hub_download("acme/ds", "data/train.csv", repo_type="dataset")).read()[:10]
        out(r)
        """.replace("COMMIT_V1", repr(fx.commits["v1"])),
        server.url, hf_home, xet=xet,
    )
    assert "error" not in res, res
    for name in ["config.json", "weights.bin", "big.dat", "sub/dir/file.txt", "with space #1.txt", "données/é.txt", "empty.txt"]:
        assert res[name] == sha(fx.files[name]), name
    assert '"version": 1' in res["tag"]
    assert '"version": 1' in res["sha"]
    assert '"feature"' in res["slash"]
    assert '"pr"' in res["pr"]
    assert "gpt2" in res["single"]
    assert res["dataset"] == "text,label"


@pytest.mark.parametrize("xet", XET)
def test_snapshot_download_whole_and_filtered(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    res = run_client(
        """
        import os, hashlib
        from huggingface_hub import snapshot_download
        def walk(d):
            out = {}
            for root, _, files in os.walk(d):
                for f in files:
                    p = os.path.join(root, f)
                    out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            return out
        full = snapshot_download("acme/tiny")
        part = snapshot_download("acme/tiny", revision="feature/x", allow_patterns=["*.json", "sub/*"], cache_dir=os.path.join(os.environ["HF_HOME"], "c2"))
        out({"full": walk(full), "full_dir": full, "part": walk(part)})
        """,
        server.url, hf_home, xet=xet,
    )
    assert "error" not in res, res
    expected = {k: sha(v) for k, v in fixture_data.files.items()}
    assert res["full"] == expected
    assert res["full_dir"].endswith(fixture_data.commits["main"])
    assert sorted(res["part"]) == ["config.json", "sub/dir/file.txt"]


@pytest.mark.parametrize("xet", XET)
def test_api_calls(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    fx = fixture_data
    res = run_client(
        """
        from huggingface_hub import HfApi
        api = HfApi()
        mi = api.model_info("acme/tiny", files_metadata=True)
        di = api.dataset_info("acme/ds")
        tree = list(api.list_repo_tree("acme/many", recursive=True))
        top = list(api.list_repo_tree("acme/tiny"))
        sub = list(api.list_repo_tree("acme/tiny", path_in_repo="sub", recursive=True, expand=True))
        refs = api.list_repo_refs("acme/tiny", include_pull_requests=True)
        commits = api.list_repo_commits("acme/tiny")
        info = api.get_paths_info("acme/tiny", ["config.json", "sub", "weights.bin", "missing.txt"], revision="v1.0")
        out({
            "sha": mi.sha, "pipeline_tag": mi.pipeline_tag, "library": mi.library_name,
            "siblings": sorted((s.rfilename, s.size, bool(s.lfs)) for s in mi.siblings),
            "ds_sha": di.sha,
            "tree_files": sum(1 for e in tree if e.__class__.__name__ == "RepoFile"),
            "tree_dirs": sum(1 for e in tree if e.__class__.__name__ == "RepoFolder"),
            "top": sorted(e.path for e in top),
            "sub": sorted((e.path, getattr(e, "last_commit", None) is not None) for e in sub),
            "branches": sorted((b.name, b.target_commit) for b in refs.branches),
            "tags": [(t.name, t.target_commit) for t in refs.tags],
            "prs": [(p.name, p.ref) for p in refs.pull_requests],
            "commits": [(c.commit_id, c.title) for c in commits],
            "paths": sorted((i.path, type(i).__name__, getattr(i, "lfs", None) is not None) for i in info),
        })
        """,
        server.url, hf_home, xet=xet,
    )
    assert "error" not in res, res
    assert res["sha"] == fx.commits["main"]
    assert res["pipeline_tag"] == "fill-mask" and res["library"] == "transformers"
    assert ["weights.bin", 2 * 1024 * 1024 + 7, True] in res["siblings"]
    assert ["config.json", len(fx.files["config.json"]), False] in res["siblings"]
    assert res["ds_sha"] == fx.commits["ds"]
    assert res["tree_files"] == 1201 and res["tree_dirs"] == 12
    assert "sub" in res["top"] and "config.json" in res["top"] and "sub/dir/file.txt" not in res["top"]
    assert res["sub"] == [["sub/dir", True], ["sub/dir/file.txt", True]]
    assert ["feature/x", fx.commits["feature/x"]] in res["branches"]
    assert ["main", fx.commits["main"]] in res["branches"]
    assert res["tags"] == [["v1.0", fx.commits["v1"]]]
    assert res["prs"] == [["1", "refs/pr/1"]]
    assert res["commits"] == [[fx.commits["main"], "second version"], [fx.commits["v1"], "first version"]]
    assert res["paths"] == [["config.json", "RepoFile", False], ["sub", "RepoFolder", False], ["weights.bin", "RepoFile", True]]


@pytest.mark.parametrize("xet", XET)
def test_hf_file_system(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    res = run_client(
        """
        from huggingface_hub import HfFileSystem
        fs = HfFileSystem()
        ls = sorted(fs.ls("acme/tiny", detail=False))
        glob = sorted(fs.glob("acme/tiny/**/*.txt"))
        with fs.open("acme/tiny/weights.bin", "rb") as f:
            f.seek(1000)
            chunk = f.read(16).hex()
            f.seek(-5, 2)
            tail = f.read().hex()
        ds = sorted(fs.glob("datasets/acme/ds@main/**"))
        out({"ls": ls, "glob": glob, "chunk": chunk, "tail": tail, "ds": ds,
             "cat": fs.cat_file("acme/tiny@v1.0/config.json").decode()})
        """,
        server.url, hf_home, xet=xet,
    )
    assert "error" not in res, res
    w = fixture_data.files["weights.bin"]
    assert "acme/tiny/config.json" in res["ls"] and "acme/tiny/sub" in res["ls"]
    assert "acme/tiny/sub/dir/file.txt" in res["glob"] and "acme/tiny/données/é.txt" in res["glob"]
    assert res["chunk"] == w[1000:1016].hex()
    assert res["tail"] == w[-5:].hex()
    assert "datasets/acme/ds@main/data/train.csv" in res["ds"]
    assert '"version": 1' in res["cat"]


@pytest.mark.parametrize("xet", XET)
def test_errors_raise_the_clients_own_exceptions(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    res = run_client(
        """
        from huggingface_hub import hf_hub_download, HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError
        r = {}
        for key, call in {
            "repo": lambda: hf_hub_download("acme/nope", "config.json"),
            "rev": lambda: hf_hub_download("acme/tiny", "config.json", revision="nope"),
            "entry": lambda: hf_hub_download("acme/tiny", "nope.json"),
            "info_repo": lambda: HfApi().model_info("acme/nope"),
            "info_rev": lambda: HfApi().model_info("acme/tiny", revision="nope"),
            "tree_entry": lambda: list(HfApi().list_repo_tree("acme/tiny", path_in_repo="nope")),
        }.items():
            try:
                call()
                r[key] = "no error"
            except Exception as e:
                r[key] = type(e).__name__
        r["file_exists"] = HfApi().file_exists("acme/tiny", "nope.json")
        r["repo_exists"] = HfApi().repo_exists("acme/nope")
        out(r)
        """,
        server.url, hf_home, xet=xet,
    )
    assert res["repo"] == "RepositoryNotFoundError"
    assert res["rev"] == "RevisionNotFoundError"
    assert res["entry"] in ("RemoteEntryNotFoundError", "EntryNotFoundError")
    assert res["info_repo"] == "RepositoryNotFoundError"
    assert res["info_rev"] == "RevisionNotFoundError"
    assert res["tree_entry"] in ("RemoteEntryNotFoundError", "EntryNotFoundError")
    assert res["file_exists"] is False and res["repo_exists"] is False
    # the EntryNotFound 404 carried X-Repo-Commit, so the client cached "missing"
    no_exist = list(hf_home.glob("hub/models--acme--tiny/.no_exist/*/nope.json"))
    assert len(no_exist) == 1


@pytest.mark.parametrize("xet", XET)
def test_hf_download_command_line(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    import os

    hf = Path(sys.executable).parent / "hf"
    out = hf_home / "out"
    p = subprocess.run(
        [str(hf), "download", "acme/tiny", "config.json", "weights.bin", "--local-dir", str(out)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert (out / "weights.bin").read_bytes() == fixture_data.files["weights.bin"]
    assert (out / "config.json").read_bytes() == fixture_data.files["config.json"]
