"""log_format = "json": one JSON object per line, request ids in the log and in the answer, and
failures naming the repo, revision and path they concern."""

from __future__ import annotations

import json
import re
import time

from conftest import Fixture
from helpers import Server, raw

REPO = "sentence-transformers/all-MiniLM-L6-v2"


def test_json_logs_with_request_ids(fixture_data: Fixture) -> None:
    s = Server(fixture_data.data, "--offline", env={"HUBMIRROR_LOG_FORMAT": "json"})
    try:
        r = raw(s.url, "GET", f"/{REPO}/resolve/main/config.json", headers={"X-Request-Id": "lb-7f3a.42"})
        assert r.status == 200 and r.headers["x-request-id"] == "lb-7f3a.42"  # a load balancer's id is kept
        r = raw(s.url, "GET", f"/{REPO}/resolve/main/nope.bin", headers={"X-Request-Id": "bad id\twith spaces"})
        assert r.status == 404
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", rid)  # a hostile id is replaced, never echoed
        streamed = raw(s.url, "GET", f"/{REPO}/resolve/main/tokenizer.json")
        assert re.fullmatch(r"[0-9a-f]{16}", streamed.headers["x-request-id"])  # streamed answers too
        time.sleep(0.3)
        records = [json.loads(line) for line in s.log.read_text().splitlines() if line.strip()]  # all JSON
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert any("hubmirror serving" in r["message"] for r in records)
        failed = [r for r in records if r.get("request_id") == rid and r["logger"] == "hubmirror"]
        assert failed, records[-5:]
        assert failed[0]["repo"] == REPO and failed[0]["revision"] == "main" and failed[0]["path"] == "nope.bin"
        access = [r for r in records if r["logger"] == "aiohttp.access"]
        assert {"lb-7f3a.42", rid} <= {r.get("request_id") for r in access}
    finally:
        s.stop()


def test_text_logs_name_the_request_and_what_failed(fixture_data: Fixture) -> None:
    s = Server(fixture_data.data, "--offline")
    try:
        r = raw(s.url, "GET", f"/{REPO}/resolve/main/missing.txt")
        rid = r.headers["x-request-id"]
        time.sleep(0.3)
        line = next(ln for ln in s.log.read_text().splitlines() if "missing.txt" in ln and " hubmirror " in ln)
        assert f"repo={REPO}" in line and "revision=main" in line and f"(request {rid})" in line
    finally:
        s.stop()
