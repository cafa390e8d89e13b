from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hubmirror.config import load_settings
from hubmirror.errors import ConfigError


def test_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "hm.toml"
    cfg.write_text('port = 9001\nupstream = "http://central:8090"\ndata = "/srv/hm"\n')
    s = load_settings(cfg)
    assert s.port == 9001 and s.upstream == "http://central:8090" and s.data == Path("/srv/hm")
    monkeypatch.setenv("HUBMIRROR_PORT", "9002")
    assert load_settings(cfg).port == 9002
    assert load_settings(cfg, port=9003).port == 9003
    assert load_settings(cfg, port=None).port == 9002


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HUBMIRROR_PORT", "HUBMIRROR_DATA", "HUBMIRROR_UPSTREAM", "HUBMIRROR_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    s = load_settings()
    assert s.port == 8090 and s.data == Path("hubmirror-data") and s.upstream == "https://huggingface.co"
    assert s.catalog_url.startswith("sqlite:///") and s.catalog_url.endswith("hubmirror-data/catalog.sqlite3")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("port = 0\n", "port"),
        ('port = "x"\n', "port"),
        ('upstream = "ftp://x"\n', "upstream"),
        ('public_url = "http://user:pw@x"\n', "public_url"),
        ("typo_key = 1\n", "typo_key"),
        ("port = [\n", "cannot read config file"),
        ('log_level = "loud"\n', "log_level"),
    ],
)
def test_bad_config_files_name_what_is_wrong(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "hm.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_serve_reports_bad_config_and_unwritable_data(tmp_path: Path) -> None:
    cfg = tmp_path / "hm.toml"
    cfg.write_text("port = 70000\n")
    for args in (["--config", str(cfg), "serve"], ["serve", "--config", str(cfg)]):
        p = subprocess.run([sys.executable, "-m", "hubmirror", *args], capture_output=True, text=True)
        assert p.returncode == 1 and "port" in p.stderr and "Traceback" not in p.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = subprocess.run([sys.executable, "-m", "hubmirror", "serve", "--data", str(blocker / "sub")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "data directory" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("var, value", [("HUBMIRROR_MIRRORS", "[{bad"), ("HUBMIRROR_PROXY__ALLOW", "notjson"),
                                        ("HUBMIRROR_TRUSTED_PROXIES", "10.0.0.1")])
def test_a_bad_environment_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert var in str(e.value) and "config file" not in str(e.value)
