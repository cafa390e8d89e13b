"""What a careless user gets from the CLI: one clear line naming what was wrong, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HM = [sys.executable, "-m", "hubmirror"]


def hm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HM, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "m").mkdir()
    (root / "m" / "config.json").write_text('{"a": 1}')
    (root / "a-file").write_text("x")
    p = hm("import", "acme/m", str(root / "m"), "--data", str(root / "d"))
    assert p.returncode == 0, p.stderr
    return root


@pytest.mark.parametrize("args, needle", [
    (["lock", "acme/m", "-o", "{root}/missing/x.lock"], "does its folder exist"),
    (["lock", "acme/m", "-o", "{root}/a-file/x.lock"], "a part of that path is a file"),
    (["export", "acme/m", "-o", "{root}/missing/x.tar"], "does its folder exist"),
    (["export", "acme/m", "-o", "{root}/a-file/x.tar"], "a part of that path is a file"),
])
def test_unusable_output_paths_are_one_line(data: Path, args: list[str], needle: str) -> None:
    p = hm(*[a.format(root=data) for a in args], "--data", str(data / "d"))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert str(data) in lines[0]
    assert not (data / "missing").exists()



def test_serve_on_a_port_in_use_or_an_address_not_here_is_one_line(data: Path) -> None:
    from helpers import Server

    s = Server(data / "d", "--offline")
    try:
        assert "offline" in s.log.read_text()  # the start says what it serves
        p = hm("serve", "--data", str(data / "d"), "--port", str(s.port))
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert "cannot listen on 127.0.0.1" in p.stderr and "in use" in p.stderr
        assert "hubmirror serving" not in p.stderr  # nothing announced before it failed
    finally:
        s.stop()
    p = hm("serve", "--data", str(data / "d"), "--host", "192.0.2.77", "--port", "18999")
    assert p.returncode == 1 and "Traceback" not in p.stderr and "cannot listen on 192.0.2.77" in p.stderr, p.stderr
