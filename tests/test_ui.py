"""The web UI in a real headless Chromium (Debian's, driven by Playwright) against a real server:
pages load and show what the catalog holds, a hostile model card renders harmlessly, search and
filters narrow the list, an admin signs in and syncs a mirror, tokens are created once and
revoked, a reader never sees a repo it may not read, CSRF and cookie flags hold, and a
thousand repos and a 10,000-file folder render within a second.

Screenshots go to test-artifacts/ui/ at the top of the repository."""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api
import pytest
from helpers import raw
from ui_site import ARTIFACTS, BIG_FOLDER, BULK, Site, launch, sha1, start

FAST = 1.0  # seconds a page of the big list or the big folder may take, at most (median of 3)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = start(tmp_path_factory.mktemp("ui"))
    try:
        yield s
    finally:
        s.server.stop()
        s.hub.stop()


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()
    where = f"UI screenshots: {ARTIFACTS}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # shown without -s (under xdist, a worker has no terminal: see -rA or the folder)
        reporter.write_line(where)
    print(where)


class Tab:
    """A browser context (its own cookies) with one page, and what it saw."""

    def __init__(self, browser: Any, site: Site) -> None:
        self.site = site
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def go(self, path: str) -> Any:
        resp = self.page.goto(self.site.url + path)
        assert resp is not None
        return resp

    def shot(self, name: str, *, full: bool = True) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full)
        return path

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector))

    def sign_in(self, token: str) -> None:
        self.go("/-/signin")
        self.page.fill("#token", token)
        self.page.click("#signin-submit")
        self.page.wait_for_selector("#signout")

    def cookies(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.context.cookies()}

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any, site: Site) -> Iterator[Tab]:
    t = Tab(browser, site)
    yield t
    t.close()


def tab_for(browser: Any, site: Site, who: str) -> Tab:
    t = Tab(browser, site)
    t.sign_in(site.tokens[who])
    return t


def rows_text(tab: Tab, selector: str) -> list[str]:
    return [str(x) for x in tab.page.locator(selector).all_inner_texts()]


# -- pages load ------------------------------------------------------------------------------


def test_overview_list_repo_page_folder_and_sizes(tab: Tab, site: Site) -> None:
    r = tab.go("/")
    assert r.status == 200
    assert tab.text("#total-repos") == f"{site.visible_total:,}"
    counts = tab.text("#repo-counts")
    assert f"{len(site.expected['mirrored']) + 1} mirrored" not in counts  # no repo is counted twice
    assert f"{len(site.expected['pulled'])} pulled through" in counts
    assert f"{len(site.expected['hosted']) + 3} hosted" in counts  # + acme/tiny, acme/corpus, big/files
    assert f"{len(site.expected['failing'])} failing" in tab.text("#syncs")
    assert f"{len(site.expected['gone'])} gone upstream" in tab.text("#syncs")
    assert tab.text("#upstream-state") in ("reachable", "unreachable")
    assert "free" in tab.text("#storage")
    tab.shot("overview")

    r = tab.go("/-/repos")
    assert r.status == 200
    assert f"{site.visible_total:,} of {site.visible_total:,} repositories" in tab.text("#count")
    assert len(rows_text(tab, "tr.repo-row")) == 50
    tab.shot("repo-list")

    r = tab.go("/-/models/acme/tiny")
    assert r.status == 200
    tab.shot("repo-page")
    assert tab.text("#commit") == site.commits["tiny"]
    refs = {tab.page.get_attribute(f"tr.ref-row:nth-child({i + 2})", "data-ref"): rows_text(tab, "tr.ref-row")[i]
            for i in range(len(rows_text(tab, "tr.ref-row")))}
    assert set(refs) == {"refs/heads/main", "refs/tags/v1.0"}
    assert site.commits["tiny"][:12] in refs["refs/heads/main"] and "second version" in refs["refs/heads/main"]
    assert site.commits["tiny-v1"][:12] in refs["refs/tags/v1.0"] and "first" in refs["refs/tags/v1.0"]
    sizes = dict(zip(tab.page.locator("#files a.file-link").all_inner_texts(),
                     tab.page.locator("#files td.size").all_inner_texts(), strict=True))
    assert sizes["config.json"] == "38 B"
    assert sizes["weights.bin"] == "2.5 MB"
    assert tab.page.get_attribute("#files tr.file:has(a:text-is('config.json')) td.size", "title") == "38 bytes"
    # a download link is the normal /resolve URL, at the commit shown
    href = tab.page.get_attribute("#files a.file-link:text-is('config.json')", "href")
    assert href == f"/acme/tiny/resolve/{site.commits['tiny']}/config.json"
    body = tab.page.request.get(site.url + href).body()
    assert body == b'{"model_type": "bert", "hidden": 128}\n'
    # copy-paste snippets: hf download at the exact commit, and the lock file
    assert tab.text("#snippet-hf") == (f"HF_ENDPOINT={site.url} hf download acme/tiny --revision {site.commits['tiny']}")
    preview = tab.text("#lock-preview")
    assert f'commit = "{site.commits["tiny"]}"' in preview and 'repo_id = "acme/tiny"' in preview
    lock = tab.page.request.get(site.url + tab.page.get_attribute("#lock-link", "href"))
    assert lock.status == 200 and "weights.bin" in lock.text() and lock.text().startswith("# hubmirror lock file")

    # into a folder
    tab.page.click("#files a.dir-link:text-is('sub/')")
    tab.page.click("#files a.dir-link:text-is('dir/')")
    assert tab.page.url.endswith("/-/models/acme/tiny/-/tree/main/sub/dir")
    assert rows_text(tab, "#files a.file-link") == ["nested.txt"]
    assert "top / sub / dir" in tab.text("#crumbs")
    tab.shot("folder")


def test_model_card_is_rendered_and_sanitized(tab: Tab, site: Site) -> None:
    tab.go("/-/models/acme/tiny")
    card = tab.page.locator("#model-card")
    assert card.locator("h1").inner_text() == "Tiny model"
    assert card.locator("table td").all_inner_texts() == ["a", "1"]
    html = card.inner_html()
    # raw HTML came out as text; no script, handler or javascript:/data: URL survived anywhere on the page
    assert "<script>" in card.inner_text() and "onerror" in card.inner_text()
    assert tab.page.locator("script").count() == 0
    assert tab.page.locator("[onerror], [onclick], [onload]").count() == 0
    for a in tab.page.locator("a").all():
        href = (a.get_attribute("href") or "").strip().lower()
        assert not href.startswith(("javascript:", "data:", "vbscript:")), href
    assert "<script" not in html.lower()  # only as escaped text
    attrs = tab.page.eval_on_selector_all(
        "#model-card *", "els => els.flatMap(e => [...e.attributes].map(a => [e.tagName, a.name, a.value]))")
    assert {name for _, name, _ in attrs} <= {"href", "rel", "src", "alt", "title"}, attrs
    assert not [a for a in attrs if a[2].strip().lower().startswith(("javascript", "data:", "vbscript"))]
    # relative links and images point at the files, at the commit shown
    assert card.locator("a:text-is('the config')").get_attribute("href") == \
        f"/acme/tiny/resolve/{site.commits['tiny']}/config.json"
    assert card.locator("img").get_attribute("src") == f"/acme/tiny/resolve/{site.commits['tiny']}/sub/dir/pic.png"
    assert card.locator("a:text-is('the config')").get_attribute("rel") == "noopener noreferrer nofollow"
    # nothing ran
    tab.page.wait_for_timeout(200)
    assert tab.dialogs == []
    assert "pwned" not in tab.page.title()
    r = raw(site.url, "GET", "/-/models/acme/tiny")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    tab.shot("model-card")


def test_search_and_filters_narrow_the_list(tab: Tab, site: Site) -> None:
    tab.go("/-/repos")
    tab.page.fill("#q", "r00")
    tab.page.click("#apply")
    assert "q=r00" in tab.page.url
    names = rows_text(tab, "a.repo-link")
    assert len(names) == 50 and all("r00" in n for n in names)
    assert "100 of" in tab.text("#count")  # bulk/r0000 .. bulk/r0099
    tab.page.select_option("#flag", "gone")
    tab.page.click("#apply")
    gone_under_100 = {r for r in site.expected["gone"] if r.startswith("bulk/r00")}
    assert set(rows_text(tab, "a.repo-link")) == gone_under_100
    tab.shot("repo-list-filtered")
    for flag in ("gone", "pinned", "failing", "stale"):
        tab.go(f"/-/repos?flag={flag}")
        shown = tab.text("#count")
        assert shown.startswith(f"{len(site.expected[flag])} of "), (flag, shown)
        if len(site.expected[flag]) <= 50:
            assert set(rows_text(tab, "a.repo-link")) == site.expected[flag], flag
    for kind, n in (("mirrored", len(site.expected["mirrored"])), ("pulled", len(site.expected["pulled"])),
                    ("hosted", len(site.expected["hosted"]) + 3)):
        tab.go(f"/-/repos?kind={kind}")
        assert tab.text("#count").startswith(f"{n} of "), kind
    tab.go("/-/repos?type=dataset")
    assert rows_text(tab, "a.repo-link") == ["acme/corpus"]
    tab.go("/-/repos?q=nothing-like-this")
    assert "No repository matches" in tab.text("#repo-table")
    # the marks of a repo page: behind the upstream, gone, a re-pointed tag, pins
    stale = min(site.expected["stale"])
    tab.go(f"/-/models/{stale}")
    assert "behind" in tab.text("tr.ref-row[data-ref='refs/heads/main'] td.upstream")
    tab.go("/-/models/bulk/r0000")
    assert "re-pointed upstream to" in tab.text("p.repointed")
    gone = min(site.expected["gone"])
    tab.go(f"/-/models/{gone}")
    assert "gone upstream since" in tab.text("#gone-mark")
    pinned = min(site.expected["pinned"])
    tab.go(f"/-/models/{pinned}")
    assert "kept" in tab.text("#pins")
    tab.shot("repo-marks")


# -- access ----------------------------------------------------------------------------------


def test_a_reader_cannot_see_a_private_repo(browser: Any, site: Site) -> None:
    bob = tab_for(browser, site, "bob")
    carol = tab_for(browser, site, "carol")
    anon = Tab(browser, site)
    try:
        for t in (bob, anon):
            t.go("/-/repos?q=secret")
            assert rows_text(t, "a.repo-link") == []
            assert t.text("#count").startswith("0 of ")
            t.go("/")
            assert t.text("#total-repos") == f"{site.visible_total:,}"
            pages = {}
            for name in ("secret/model", "secret/nothing-here"):
                for path in (f"/-/models/{name}", f"/-/models/{name}/-/tree/main", f"/-/models/{name}/-/lock/main"):
                    r = t.go(path)
                    assert r.status == 404, path
                    pages[path.replace(name, "X")] = pages.get(path.replace(name, "X"), []) + [t.page.content()]
            for path, (hidden, missing) in pages.items():
                assert hidden == missing, path  # the very page a missing repo gets
        bob.shot("private-repo-hidden")
        # the file URLs too (the read API): the same answer as a missing repo
        h = {"Authorization": f"Bearer {site.tokens['bob']}"}
        a = raw(site.url, "GET", "/secret/model/resolve/main/config.json", h)
        b = raw(site.url, "GET", "/secret/nothing-here/resolve/main/config.json", h)
        assert a.status == b.status == 404 and a.body == b.body
        # a member of the group the rule names sees it
        carol.go("/-/repos?q=secret")
        assert rows_text(carol, "a.repo-link") == ["secret/model"]
        assert carol.go("/-/models/secret/model").status == 200
        carol.go("/")
        assert carol.text("#total-repos") == f"{site.visible_total + 1:,}"
        # and readers have no admin pages
        assert "Admin" not in bob.text("header")
        r = bob.go("/-/admin/mirrors")
        assert r.status == 403
        assert anon.go("/-/admin/tokens").url.startswith(site.url + "/-/signin")
    finally:
        for t in (bob, carol, anon):
            t.close()


# -- admin -----------------------------------------------------------------------------------


def test_admin_signs_in_syncs_a_mirror_and_sees_it_finish(browser: Any, site: Site) -> None:
    admin = Tab(browser, site)
    try:
        admin.go("/")
        admin.page.click("#signin-link")
        admin.page.fill("#token", site.tokens["root"])
        admin.page.click("#signin-submit")
        assert "signed in as root" in admin.text("#who")
        cookie = admin.cookies()["hubmirror_session"]
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["secure"] is False
        assert site.tokens["root"] not in cookie["value"] and site.tokens["root"][3:20] not in cookie["value"]
        admin.page.click("#nav-admin")
        row = admin.page.locator("tr.mirror[data-repo='acme/upmodel']")
        row.locator("button.sync-now").click()
        assert admin.text("#done") == "Sync queued."
        deadline = time.monotonic() + 60
        while "up to date" not in row.locator("td.state").inner_text() or "syncing" in row.inner_text():
            assert time.monotonic() < deadline, row.inner_text()
            time.sleep(0.5)
            admin.page.reload()
        admin.shot("admin-mirror-synced", full=False)
        admin.page.click("tr.mirror[data-repo='acme/upmodel'] a")
        assert admin.text("#commit") == site.upstream_commit
        history = rows_text(admin, "#history tr.run")
        assert history and "ui" in history[0] and "synced" in history[0]
        assert "up to date" in admin.text("tr.ref-row[data-ref='refs/heads/main'] td.upstream")
        admin.shot("repo-after-sync")
        # freeze and unfreeze
        admin.go("/-/admin/mirrors")
        admin.page.locator("tr.mirror[data-repo='acme/upmodel'] button.freeze").click()
        assert "frozen" in admin.text("#done")
        assert admin.page.locator("tr.mirror[data-repo='acme/upmodel'] button.sync-now").count() == 0
        admin.page.locator("tr.mirror[data-repo='acme/upmodel'] button.unfreeze").click()
        assert "unfrozen" in admin.text("#done")
        # pin a revision, see it on the repo page, unpin it
        admin.go("/-/admin/pins")
        admin.page.fill("#add-pin input[name=repo]", "acme/tiny")
        admin.page.fill("#add-pin input[name=revision]", "v1.0")
        admin.page.fill("#add-pin input[name=note]", "release 1.0")
        admin.page.click("#add-pin button")
        assert admin.text("#done").startswith("Pinned")
        assert "acme/tiny" in admin.text("#pins") and site.commits["tiny-v1"][:12] in admin.text("#pins")
        admin.go("/-/models/acme/tiny")
        assert "release 1.0" in admin.text("#pins")
        admin.go("/-/admin/pins")
        admin.page.locator("#pins tr.pin:has-text('acme/tiny') button").click()
        assert admin.text("#done") == "Unpinned." and "acme/tiny" not in admin.text("#pins")
        # the audit log names the admin
        admin.go("/-/admin/audit")
        events = rows_text(admin, "#audit tr.event")
        assert any("sync-requested" in e and "user:root (token root-admin)" in e for e in events)
        assert any("freeze" in e for e in events) and any("ui-signin" in e for e in events)
        assert any("pin" in e and "release 1.0" in e for e in events)
        admin.shot("admin-audit", full=False)
        # an admin session from an address outside access.admin_allow_ips gets no admin page
        cookie = admin.cookies()["hubmirror_session"]["value"]
        r = raw(site.url, "GET", "/-/admin/mirrors", {"Cookie": f"hubmirror_session={cookie}",
                                                       "X-Forwarded-For": "10.9.8.7"})
        assert r.status == 403 and b"admin_allow_ips" in r.body
        admin.go("/-/admin/audit")
        assert any("admin-denied" in e and "10.9.8.7" in e and "admin_allow_ips" in e
                   for e in rows_text(admin, "#audit tr.event"))
    finally:
        admin.close()


def test_admin_creates_a_token_once_and_revokes_it(browser: Any, site: Site) -> None:
    admin = tab_for(browser, site, "root")
    try:
        admin.go("/-/admin/tokens")
        admin.page.fill("#token-name", "ui-made")
        admin.page.select_option("#token-user", "bob")
        admin.page.click("#token-create")
        token = admin.text("#new-token").strip()
        assert re.fullmatch(r"hm_[A-Za-z0-9_-]{43}", token)
        admin.shot("admin-token-created")
        who = raw(site.url, "GET", "/api/whoami-v2", {"Authorization": f"Bearer {token}"})
        assert who.status == 200 and who.json()["name"] == "bob"
        admin.go("/-/admin/tokens")
        assert token not in admin.page.content()  # shown once
        assert "active" in admin.text("tr.token-row[data-name='ui-made']")
        admin.page.locator("tr.token-row[data-name='ui-made'] button.revoke").click()
        assert "revoked" in admin.text("#done")
        assert "revoked" in admin.text("tr.token-row[data-name='ui-made']")
        assert raw(site.url, "GET", "/api/whoami-v2", {"Authorization": f"Bearer {token}"}).status == 401
        # a name in use is refused on the page, nothing else changes
        admin.page.fill("#token-name", "ui-made")
        admin.page.click("#token-create")
        assert "ui-made" in admin.text("#form-error")
    finally:
        admin.close()


def test_a_revoked_token_ends_its_ui_sessions(browser: Any, site: Site) -> None:
    admin = tab_for(browser, site, "root")
    try:
        admin.go("/-/admin/tokens")
        admin.page.fill("#token-name", "short-lived")
        admin.page.select_option("#token-user", "carol")
        admin.page.click("#token-create")
        token = admin.text("#new-token").strip()
        carol = Tab(browser, site)
        carol.sign_in(token)
        assert carol.go("/-/models/secret/model").status == 200
        admin.go("/-/admin/tokens")
        admin.page.locator("tr.token-row[data-name='short-lived'] button.revoke").click()
        assert carol.go("/-/models/secret/model").status == 404
        assert "hubmirror_session" not in carol.cookies()
        carol.close()
    finally:
        admin.close()


# -- CSRF, cookies, sessions ---------------------------------------------------------------------


def test_csrf_origin_and_cookie_flags(browser: Any, site: Site) -> None:
    admin = tab_for(browser, site, "root")
    try:
        admin.go("/-/admin/mirrors")
        good = admin.page.get_attribute("form#add-mirror input[name=csrf]", "value")
        post = admin.context.request.post
        form = {"repo": "acme/csrf-test", "type": "model", "revisions": "main", "schedule": "1h"}
        url = site.url + "/-/admin/mirrors/add"
        for bad in ({}, {"csrf": "x" * len(good)}, {"csrf": good[:-1] + ("A" if good[-1] != "A" else "B")}):
            r = post(url, form={**form, **bad}, max_redirects=0)
            assert r.status == 403, (bad, r.status)
            assert "CSRF" in r.text()
        r = post(url, form={**form, "csrf": good}, headers={"Origin": "http://evil.example"}, max_redirects=0)
        assert r.status == 403
        r = post(site.url + "/-/signout", form={"csrf": "nope"}, max_redirects=0)
        assert r.status == 403
        mirrors = json.loads(raw(site.url, "GET", "/api/admin/mirrors",
                                 {"Authorization": f"Bearer {site.tokens['root']}"}).body)
        assert "acme/csrf-test" not in [m["repo"] for m in mirrors]  # nothing of it happened
        r = post(url, form={**form, "csrf": good}, max_redirects=0)
        assert r.status == 303  # the same form with its token goes through
        mirrors = json.loads(raw(site.url, "GET", "/api/admin/mirrors",
                                 {"Authorization": f"Bearer {site.tokens['root']}"}).body)
        assert {"repo": "acme/csrf-test", "source": "ui"}.items() <= next(
            m for m in mirrors if m["repo"] == "acme/csrf-test").items()
        # a POST without a session at all
        r = raw(site.url, "POST", "/-/admin/mirrors/sync", {"Content-Type": "application/x-www-form-urlencoded"},
                b"type=model&repo=acme/upmodel")
        assert r.status == 403
        # the sign-in form has a CSRF token of its own (a cookie, SameSite=Strict, and the field)
        r = raw(site.url, "POST", "/-/signin", {"Content-Type": "application/x-www-form-urlencoded"},
                f"token={site.tokens['bob']}&csrf=abc".encode())
        assert r.status == 403 and "set-cookie" not in r.headers
    finally:
        admin.close()
    # cookie flags on the wire; Secure when the UI is reached over https (here: a trusted proxy says so)
    form_page = raw(site.url, "GET", "/-/signin", {"X-Forwarded-Proto": "https"})
    pre = form_page.headers["set-cookie"]
    assert "HttpOnly" in pre and "SameSite=Strict" in pre and "Secure" in pre
    pre_value = pre.split(";", 1)[0].split("=", 1)[1]
    field = re.search(rb'name="csrf" value="([^"]+)"', form_page.body)
    assert field is not None and field.group(1).decode() == pre_value
    status, headers, _ = _send(site.url, "POST", "/-/signin", {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"hubmirror_signin={pre_value}",
        "X-Forwarded-Proto": "https"}, f"token={site.tokens['bob']}&csrf={pre_value}&next=//evil.example/".encode())
    assert status == 303 and dict(headers)["location"] == "/"  # never to another site
    cookie = next(v for k, v in headers if k == "set-cookie" and v.startswith("hubmirror_session="))
    for flag in ("HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age=43200"):
        assert flag in cookie, (flag, cookie)
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert site.tokens["bob"] not in value and site.tokens["bob"][3:] not in value
    # the session works, and after sign-out the same cookie no longer does
    session = {"Cookie": f"hubmirror_session={value}"}
    page = raw(site.url, "GET", "/", session)
    assert b"signed in as <b>bob</b>" in page.body
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    assert csrf is not None
    out = raw(site.url, "POST", "/-/signout", {**session, "Content-Type": "application/x-www-form-urlencoded"},
              b"csrf=" + csrf.group(1))
    assert out.status == 303 and "hubmirror_session=" in out.headers["set-cookie"]
    assert b"signed in as" not in raw(site.url, "GET", "/", session).body


def test_sessions_are_signed_expire_and_hold_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubmirror.catalog import Catalog
    from hubmirror.ui import session as s

    key = s.load_key(None, tmp_path)
    assert (tmp_path / s.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert s.load_key(None, tmp_path) == key  # kept: every worker of the box signs alike
    sessions = s.Sessions(Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}"), key, ttl=60)
    value, sess = sessions.issue(7, "ab" * 32)
    assert sessions.open(value) == sess
    body, mac = value.split(".")[1:]
    assert sessions.open(f"v1.{body}.{mac[:-2]}AA") is None  # a forged signature
    other = s.Sessions(sessions.catalog, s.load_key("another secret of at least 32 chars!!", tmp_path), ttl=60)
    assert other.open(value) is None  # another key
    assert sessions.csrf_ok(sess, sessions.csrf(sess)) and not sessions.csrf_ok(sess, "x")
    now = time.time()
    monkeypatch.setattr(s.time, "time", lambda: now + 61)
    assert sessions.open(value) is None  # expired
    monkeypatch.undo()
    sessions.end(sess)
    assert sessions.open(value) is None  # signed out


# -- speed -----------------------------------------------------------------------------------


def _send(url: str, method: str, path: str, headers: dict[str, str],
          body: bytes | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Like helpers.raw, but every header (Set-Cookie comes more than once)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, [(k.lower(), v) for k, v in r.getheaders()], r.read()
    finally:
        conn.close()


def _timed(url: str) -> tuple[float, bytes]:
    times, body = [], b""
    for _ in range(3):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), body


def test_a_thousand_repos_and_a_10000_file_folder_render_fast(tab: Tab, site: Site) -> None:
    t_list, body = _timed(site.url + "/-/repos")
    total = re.search(rb"([0-9,]+) of \1 repositories", body)
    assert total is not None and int(total.group(1).replace(b",", b"")) >= site.visible_total  # (+ acme/upmodel once synced)
    t_last, body = _timed(site.url + f"/-/repos?page={-(-int(total.group(1).replace(b',', b'')) // 50)}")
    assert b"repo-row" in body and b'id="next"' not in body
    t_search, body = _timed(site.url + "/-/repos?q=r09&flag=pinned")
    t_repo, body = _timed(site.url + "/-/models/big/files")
    assert f"{BIG_FOLDER + 1:,} files".encode() in body  # and the README
    t_folder, body = _timed(site.url + "/-/models/big/files/-/tree/main/data")
    assert body.count(b'class="file"') == 200 and f"{BIG_FOLDER:,} entries".encode() in body
    print(f"\nrender times (median of 3, s): list {t_list:.3f}, last page {t_last:.3f}, search {t_search:.3f}, "
          f"repo page {t_repo:.3f}, 10,000-file folder {t_folder:.3f}")
    for what, t in (("repo list", t_list), ("last page", t_last), ("search", t_search), ("repo page", t_repo),
                    ("folder", t_folder)):
        assert t < FAST, f"{what} took {t:.3f} s"
    # the folder pages follow one another without gaps or repeats
    tab.go("/-/models/big/files/-/tree/main/data")
    first = rows_text(tab, "#files a.file-link")
    tab.page.click("#next-page")
    second = rows_text(tab, "#files a.file-link")
    assert first[0] == "f00000.txt" and first[-1] == "f00199.txt" and second[0] == "f00200.txt"
    assert tab.page.locator("#first-page").count() == 1
    tab.shot("big-folder-page-2", full=False)
    assert BULK == 1000
    assert sha1("bulk0") in raw(site.url, "GET", "/-/models/bulk/r0000").body.decode()


# -- in-process: links under a prefix, the card sanitizer's edges, the switch -----------------------


def test_links_under_a_public_url_prefix_and_card_edges() -> None:
    from hubmirror.model.names import RepoRef, RepoType
    from hubmirror.ui.card import render
    from hubmirror.ui.render import Urls, root_of

    u = Urls(root_of("https://hub.example.org/hf"))
    ref = RepoRef(RepoType.DATASET, "acme/corpus")
    assert u.home() == "/hf/"
    assert u.tree(ref, "feature/x", "a b/c#d") == "/hf/-/datasets/acme/corpus/-/tree/feature%2Fx/a%20b/c%23d"
    assert u.file(ref, "0" * 40, "a b/c#d") == f"/hf/datasets/acme/corpus/resolve/{'0' * 40}/a%20b/c%23d"
    assert u.repos(q="x y", page=1) == "/hf/-/repos?q=x+y"

    def f(p: str) -> str:
        return f"/f/{p}"

    html = render("[a](//evil.example/x) [b](../../etc/passwd) ![c](data:image/svg+xml;base64,PHN2Zz4=) "
                  "[d](vbscript:x) [e](file:///etc/passwd) [g](sub/../ok.txt#frag) <iframe src=x></iframe> "
                  "[h](https://example.org) [i](mailto:a@b.c) <style>*{}</style>", f)
    assert "<iframe" not in html and "<style" not in html  # text, not markup
    assert 'href="#"' in html  # ../../ leaves the repo: no link
    assert 'href="/f/ok.txt#frag"' in html
    assert 'href="vbscript' not in html and 'href="file:' not in html and 'src="data:' not in html
    assert 'href="https://example.org"' in html and 'href="mailto:a@b.c"' in html


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")  # app.py's app["services"]
def test_the_ui_can_be_switched_off(tmp_path: Path) -> None:
    from hubmirror.app import build_app, open_services
    from hubmirror.config import Settings, UiSettings

    for enabled in (True, False):
        data = tmp_path / str(enabled)
        services = open_services(Settings(data=data, ui=UiSettings(enabled=enabled)))
        app = build_app(services)
        paths = {r.get_info().get("path") or r.get_info().get("formatter") for r in app.router.resources()}
        assert ("/" in paths) is enabled and (r"/-/{tail}" in paths) is enabled, paths
        services.catalog.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_ui_queries_on_both_databases(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from hubmirror import ops
    from hubmirror.catalog import Catalog
    from hubmirror.catalog.lifecycle import ImportedRepo
    from hubmirror.model.entries import Commit, Entry, with_directories
    from hubmirror.model.mirror import MirrorSpec
    from hubmirror.model.names import RepoRef, RepoType
    from hubmirror.ui import queries as q

    url = f"sqlite:///{tmp_path / 'c.sqlite3'}" if backend == "sqlite" else str(request.getfixturevalue("postgres_database"))
    cat = Catalog(url)
    try:
        cat.migrate()
        a, b = RepoRef(RepoType.MODEL, "acme/a"), RepoRef(RepoType.DATASET, "acme/b")
        files, _ = with_directories([Entry("x/1.txt", "file", sha1("1"), 5), Entry("x/2.txt", "file", sha1("2"), 7),
                                     Entry("top.txt", "file", sha1("3"), 11)])
        cat.record_import([ImportedRepo(a, "mirror", [(Commit(sha1("ca"), title="first"), files)],
                                        {"refs/heads/main": sha1("ca"), "refs/tags/v1": sha1("ca")}),
                           ImportedRepo(b, "proxy", [(Commit(sha1("cb")), [])], {"refs/heads/main": sha1("cb")})],
                          reason="t", action="t")
        rows = {r.ref: r for r in cat.list_repos()}
        cat.upsert_mirror(MirrorSpec(repo="acme/a"), "cli")
        cat.update_mirror_state(a, upstream={"main": sha1("newer"), "v1": sha1("ca")}, last_error="boom")
        cat.pin(rows[a].pk, sha1("ca"), "v1", "n")
        cat.mark_gone(rows[b].pk, "gone")
        run = cat.start_run(a, "ui")
        s = {x.row.ref: x for x in q.repo_summaries(cat)}
        assert s[a].stale and s[a].failing and s[a].pins == 1 and s[a].kind == "mirrored" and s[a].updated_at
        assert not s[b].stale and s[b].gone_since is not None and s[b].kind == "pulled through" and s[b].mirror is None
        assert q.behind(s[a].mirror, q.mirror_refs(cat)[a]) == {"main": sha1("newer")}  # type: ignore[arg-type]
        assert [(r["repo_id"], r["trigger"]) for r in q.running_syncs(cat)] == [("acme/a", "ui")]
        cat.finish_run(run, status="synced")
        assert q.running_syncs(cat) == []
        refs = q.repo_refs(cat, rows[a])
        assert [(r.short, r.kind, r.title) for r in refs] == [("main", "branch", "first"), ("v1", "tag", "first")]
        marks = q.repo_marks(cat, rows[a])
        assert marks["gone"] is None and [p["revision"] for p in marks["pins"]] == ["v1"]
        assert q.repo_marks(cat, rows[b])["gone"]["message"] == "gone"
        assert q.commit_totals(cat, rows[a], sha1("ca")) == (3, 23)
        assert q.folder_count(cat, rows[a], sha1("ca"), "") == 2 and q.folder_count(cat, rows[a], sha1("ca"), "x") == 2
        actor = ops.Actor("t", "local")
        ops.add_user(cat, actor, "u", ["g1", "g2"])
        new = ops.create_token(cat, actor, "tk", "u", "admin", repos=["acme/*"])
        st = q.token_state(cat, new.info.id)
        assert st is not None and st.user == "u" and st.groups == {"g1", "g2"} and st.repos == ("acme/*",)
        assert st.role.value == "admin" and st.revoked_at is None and len(st.hash) == 64
        assert q.token_state(cat, new.info.id + 1000) is None
    finally:
        cat.close()
