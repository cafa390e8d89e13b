"""The access log says how many bytes each answer carried, file bodies sent with sendfile(2) included."""

from __future__ import annotations

import re
import time

from conftest import Fixture
from helpers import Server, raw


def test_the_access_log_counts_file_bodies(fixture_data: Fixture, tmp_path_factory: object) -> None:
    s = Server(fixture_data.data, "--offline")
    try:
        path = "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/tokenizer.json"
        body = raw(s.url, "GET", path).body
        assert len(body) > 100_000
        part = raw(s.url, "GET", path, headers={"Range": "bytes=10-59"}).body
        assert len(part) == 50
        time.sleep(0.3)
        lines = [ln for ln in s.log.read_text().splitlines() if f'"GET {path} HTTP/1.1"' in ln]
        sizes = [int(m.group(1)) for ln in lines if (m := re.search(r'" (?:200|206) (\d+) ', ln))]
        assert len(sizes) == 2, lines
        # headers and body: at least the body, and not much more than it
        assert len(body) <= sizes[0] < len(body) + 2000 and 50 <= sizes[1] < 50 + 2000, (sizes, len(body))
    finally:
        s.stop()
