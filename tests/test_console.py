"""The web console (issue 9), end to end: a real ``gateway run``, Debian's Chromium driven
by Playwright (``/usr/bin/chromium``; no browser is ever downloaded), and real requests to
the gateway's public listener to check that what the console changes is what the gateway
does. Every browser test saves a screenshot of the page it checked to tests/screenshots/.

One gateway (module scope) serves the tests; each test uses its own Host values, so the
order does not matter. The console polls every 0.5 s here (``?poll=500``).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from support import Gateway, Upstream, get, metric_sum, running_gateway, start_gateway

from gateway import admin, hosts
from gateway.tokens import entry_for, new_token

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).parent / "screenshots"
UI = Path(admin.__file__).parent / "ui"
ADMIN, VIEWER = new_token(), new_token()
HOSTILE = "<img src=x onerror=alert(1)>.evil"
HOSTILE2 = '"><script>alert(2)</script>'

expect.set_options(timeout=10_000)


def config(upstream: Upstream, **top: Any) -> dict[str, Any]:
    up = [upstream.url]
    return {
        "environments": [
            {
                "name": "prod",
                "hostname": "prod.console.test",
                "secure_endpoints": ["www.acme.test", "api.acme.test"],
                "candidate_endpoints": ["www.acme.test", "new.acme.test"],
                "upstreams": up,
            },
            {
                "name": "lifetime",
                "hostname": "lifetime.console.test",
                "secure_endpoints": ["lt.acme.test"],
                "locked": True,
                "upstreams": up,
            },
            {
                "name": "staging",
                "hostname": "staging.console.test",
                "enforcement": "report",
                "upstreams": up,
            },
        ],
        "listeners": [
            {
                "name": "public",
                "bind": "127.0.0.1:0",
                "environments": ["prod", "lifetime", "staging"],
                "default_environment": "prod",
            },
            {  # no default environment: unknown hosts are refused with no route
                "name": "edge",
                "bind": "127.0.0.1:0",
                "environments": ["prod", "staging"],
            },
        ],
        **top,
    }


def tokens_file(tmp: Path) -> Path:
    p = tmp / "tokens.json"
    p.write_text(
        json.dumps([entry_for("ops", "admin", ADMIN), entry_for("watch", "viewer", VIEWER)])
    )
    return p


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("console")
    g = start_gateway(config(upstream), tmp, "--admin-tokens", str(tokens_file(tmp)))
    yield g
    g.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Console:
    page: Page
    name: str
    problems: list[str] = field(default_factory=list)  # script errors, CSP reports
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt: none expected

    def open(self, gw: Gateway, token: str | None = None) -> None:
        self.page.goto(gw.admin + "/ui/?poll=500")
        if token is not None:
            self.page.fill("#token", token)
            self.page.click("#signin-button")
            expect(self.page.locator("#app")).to_be_visible()

    def select(self, env: str) -> None:
        self.page.get_by_role("link", name=env, exact=True).click()
        expect(self.page.locator("#env-name")).to_have_text(env)

    def shot(self, suffix: str = "") -> None:
        """Screenshot the page as checked, and fail on script errors, CSP reports, dialogs."""
        self.page.screenshot(path=str(SHOTS / f"{self.name}{suffix}.png"), full_page=True)
        assert not self.problems, self.problems
        assert not self.dialogs, self.dialogs


@pytest.fixture
def console(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    # test_x[aiohttp] -> test_x-aiohttp: one file per test and engine
    c = Console(page, re.sub(r"\[(.*)\]$", r"-\1", request.node.name))
    page.on("pageerror", lambda exc: c.problems.append(f"script error: {exc}"))

    def on_console(msg: Any) -> None:
        if msg.type == "error" and "Content Security Policy" in msg.text:
            c.problems.append(f"CSP: {msg.text}")

    def on_dialog(dialog: Any) -> None:
        c.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("console", on_console)
    page.on("dialog", on_dialog)
    yield c
    context.close()


def api(
    gw: Gateway, method: str, path: str, token: str = ADMIN, body: Any = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        gw.admin + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def entries(gw: Gateway, env: str) -> list[str]:
    status, body = api(gw, "GET", f"/api/v1/environments/{env}", VIEWER)
    assert status == 200
    return list(body["secure_endpoints"])


def row(page: Page, table: str, host: str) -> Any:
    """The row of #table whose host cell is exactly ``host`` (matched as text)."""
    return page.locator(f"#{table} tbody tr").filter(
        has=page.locator("td.host").get_by_text(host, exact=True)
    )


def write_buttons(page: Page) -> Any:
    return page.get_by_role("button", name=re.compile(r"^(Remove|Allow|Add endpoint)\b"))


# -- served safely ------------------------------------------------------------------------


def _http(gw: Gateway, path: str, host: str | None = None) -> http.client.HTTPResponse:
    h, port = gw.addresses["admin"]
    conn = http.client.HTTPConnection(h, port, timeout=10)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_console_is_served_with_strict_headers_behind_the_host_guard(gw: Gateway) -> None:
    for path, ctype in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ]:
        r = _http(gw, path)  # no token: the page itself holds no data
        assert r.status == 200, path
        assert r.headers["Content-Type"].startswith(ctype)
        assert r.headers["Content-Security-Policy"] == (
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["Cache-Control"] == "no-store"
    r = _http(gw, "/ui")
    assert r.status == 308 and r.headers["Location"] == "/ui/"
    assert _http(gw, "/ui/../gateway/admin.py").status == 404
    assert _http(gw, "/ui/secret.json").status == 404
    # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends its own name.
    assert _http(gw, "/ui/", host="evil.example").status == 421
    assert _http(gw, "/ui/app.js", host="evil.example:80").status == 421
    # The data needs a token; the console's own route tells who it is.
    assert api(gw, "GET", "/api/v1/whoami", token="nope")[0] == 401
    assert api(gw, "GET", "/api/v1/whoami", VIEWER) == (200, {"name": "watch", "role": "viewer"})

    # Nothing inline (the CSP would refuse it anyway) and no HTML built from strings.
    html = (UI / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\sstyle=|\son[a-z]+=", html)
    assert not re.search(r"https?://", html)
    js = (UI / "app.js").read_text()
    code = "\n".join(ln for ln in js.splitlines() if not ln.lstrip().startswith("//"))
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert sink not in code, sink
    assert "localStorage" not in code and "document.cookie" not in code
    # The registrable-domain warning uses the same public-suffix subset as the linter.
    listed = re.search(r"const PUBLIC_SUFFIXES = new Set\(`([^`]*)`", js)
    assert listed is not None
    assert set(listed.group(1).split()) == hosts._COMMON_PUBLIC_SUFFIXES


# -- in the browser ------------------------------------------------------------------------


def test_sign_in_shows_role_environments_and_rates(gw: Gateway, console: Console) -> None:
    page = console.page
    console.open(gw)
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#open-reads")).to_be_hidden()  # this gateway has tokens
    page.fill("#token", "gw_not-a-token")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_have_text(
        "Sign-in failed: 401 Unauthorized: a valid bearer token is required"
    )
    assert page.evaluate("sessionStorage.length") == 0
    console.shot("_refused")

    page.fill("#token", ADMIN)
    page.click("#signin-button")
    expect(page.locator("#who")).to_have_text("opsadmin")
    assert page.evaluate("sessionStorage.length") == 1
    assert page.evaluate("document.cookie") == "", "the token is never a cookie"
    envs = page.locator("#envs tbody tr")
    expect(envs).to_have_count(3)
    expect(envs.nth(0)).to_contain_text("prod.console.test")
    expect(envs.nth(0).locator(".badge")).to_have_text("enforce")
    expect(envs.nth(1)).to_contain_text("lifetime.console.test")
    expect(envs.nth(1).locator(".badge-locked")).to_have_text("locked")
    expect(envs.nth(2).locator(".badge")).to_have_text("report only")

    # Rates come from two polls' counters: keep traffic flowing until both show up.
    stop = threading.Event()
    port = gw.port("public")

    def traffic() -> None:
        while not stop.is_set():
            assert get(port, "www.acme.test").status == 200
            assert get(port, "rates-unknown.acme.test").status == 503

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        prod = envs.nth(0).locator("td.num")
        page.wait_for_function(
            """() => {
                const cells = document.querySelectorAll('#envs tbody tr:first-child td.num');
                return parseFloat(cells[1].textContent) > 0 && parseFloat(cells[2].textContent) > 0;
            }"""
        )
        allowed, blocked = float(prod.nth(1).inner_text()), float(prod.nth(2).inner_text())
        assert allowed > 0 and blocked > 0
    finally:
        stop.set()
        t.join()
    console.shot()

    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#envs tbody tr")).to_have_count(0)
    page.reload()
    expect(page.locator("#signin")).to_be_visible()


def test_add_an_endpoint_then_remove_it(gw: Gateway, console: Console) -> None:
    page, port, host = console.page, gw.port("public"), "shop.acme.test"
    assert get(port, host).status == 503
    console.open(gw, ADMIN)
    expect(page.locator("#env-name")).to_have_text("prod")

    # An invalid value: the API's refusal, shown as it is.
    page.fill("#add-host", "bad host!")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator("#endpoints-msg.msg-error")).to_contain_text("422 Unprocessable Content: ")
    expect(page.locator("#endpoints-msg")).to_contain_text("bad host!")

    page.fill("#add-host", host)
    page.get_by_role("button", name="Add endpoint").click()  # same domain as www: no warning
    expect(page.locator("#endpoints-msg")).to_contain_text(
        f"Added {host}. The gateway serves it now"
    )
    expect(row(page, "endpoints", host)).to_have_count(1)
    assert host in entries(gw, "prod")
    resp = get(port, host, "/through")
    assert resp.status == 200, "traffic for the new endpoint passes through the gateway"
    assert dict(map(tuple, resp.json()["headers"]))["Host"] == host
    console.shot("_added")

    row(page, "endpoints", host).get_by_role("button", name=f"Remove {host}").click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text(f"Remove {host} from prod?")
    expect(page.locator("#confirm-text")).to_contain_text("will be refused")
    page.click("#confirm-ok")
    expect(page.locator("#endpoints-msg")).to_contain_text(f"Removed {host}.")
    expect(row(page, "endpoints", host)).to_have_count(0)
    assert host not in entries(gw, "prod")
    assert get(port, host).status == 503, "and now it is refused"

    # The audit trail, newest first, names who did what.
    audit = page.locator("#audit tbody tr")
    clock, sha_change = re.compile(r"^\d\d:\d\d:\d\d$"), re.compile(r"^[0-9a-f]{8} → [0-9a-f]{8}$")
    for i, action in enumerate(["remove", "add"]):
        expect(audit.nth(i).locator("td")).to_have_text(
            [clock, "ops admin", "prod", action, host, sha_change]
        )
    console.shot()


def test_allow_a_host_from_the_blocked_list(gw: Gateway, console: Console) -> None:
    page, port = console.page, gw.port("public")
    long_value = "a." * 150 + "acme.test"  # malformed (> 253) and longer than 256: truncated
    for host, n in [("promo.acme.test", 3), ("10.20.30.40", 2), ("brand-new.example.org", 1)]:
        for _ in range(n):
            assert get(port, host).status == 503
    assert get(port, long_value).status == 400
    console.open(gw, ADMIN)

    ip_row = row(page, "blocked", "10.20.30.40")
    expect(ip_row).to_contain_text("unknown host")
    ip_row.get_by_role("button", name="Allow 10.20.30.40").click()
    expect(page.locator("#confirm-warnings li")).to_have_count(1)
    expect(page.locator("#confirm-warnings")).to_contain_text("IP literal")
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden()

    row(page, "blocked", "brand-new.example.org").get_by_role("button", name="Allow").click()
    expect(page.locator("#confirm-warnings")).to_contain_text(
        "New domain: example.org is not the domain of this environment's hostname"
    )
    console.shot("_confirm")
    page.keyboard.press("Escape")  # also a "no"
    expect(page.locator("#confirm")).to_be_hidden()
    assert not {"10.20.30.40", "brand-new.example.org"} & set(entries(gw, "prod"))

    truncated = page.locator("#blocked tbody tr").filter(has_text="truncated")
    expect(truncated).to_have_count(1)
    expect(truncated.get_by_role("button")).to_have_count(0)

    promo = row(page, "blocked", "promo.acme.test")
    expect(promo.locator("td.num")).to_have_text("3")
    promo.get_by_role("button", name="Allow promo.acme.test").click()
    expect(page.locator("#confirm-title")).to_have_text("Allow promo.acme.test in prod?")
    expect(page.locator("#confirm-warnings")).to_be_hidden()  # same domain, a name
    page.click("#confirm-ok")
    expect(page.locator("#blocked-msg")).to_contain_text("Allowed promo.acme.test.")
    expect(promo.locator(".badge-ok")).to_have_text("allowed now")
    assert "promo.acme.test" in entries(gw, "prod")
    assert get(port, "promo.acme.test").status == 200
    console.shot()
    api(gw, "DELETE", "/api/v1/environments/prod/endpoints/promo.acme.test")


def test_allow_a_host_no_environment_claimed(gw: Gateway, console: Console) -> None:
    """Refused on a listener without a default environment, a host is listed under no
    environment; it is shown with the selected one and can be allowed there."""
    page, edge = console.page, gw.port("edge")
    for _ in range(2):
        assert get(edge, "orphan.acme.test").status == 503
    console.open(gw, ADMIN)
    orphan = row(page, "blocked", "orphan.acme.test")
    expect(orphan).to_contain_text("no environment")
    expect(orphan).to_contain_text("no route")
    expect(orphan.locator("td.num")).to_have_text("2")
    orphan.get_by_role("button", name="Allow orphan.acme.test").click()
    expect(page.locator("#confirm-title")).to_have_text("Allow orphan.acme.test in prod?")
    page.click("#confirm-ok")
    expect(page.locator("#blocked-msg")).to_contain_text("Allowed orphan.acme.test.")
    assert "orphan.acme.test" in entries(gw, "prod")
    assert get(edge, "orphan.acme.test").status == 200
    console.shot()
    api(gw, "DELETE", "/api/v1/environments/prod/endpoints/orphan.acme.test")


def test_a_viewer_cannot_change_anything(gw: Gateway, console: Console) -> None:
    page, port = console.page, gw.port("public")
    assert get(port, "viewer-sees.acme.test").status == 503
    console.open(gw, VIEWER)
    expect(page.locator("#who")).to_have_text("watchviewer")
    expect(page.locator("#readonly-note")).to_contain_text("a viewer")
    expect(row(page, "blocked", "viewer-sees.acme.test")).to_have_count(1)
    expect(row(page, "endpoints", "www.acme.test")).to_have_count(1)
    expect(page.locator("#add-form")).to_be_hidden()
    expect(write_buttons(page)).to_have_count(0)
    console.select("staging")
    expect(page.locator("#add-form")).to_be_hidden()
    expect(write_buttons(page)).to_have_count(0)
    # The gateway, not the page, is what refuses: the viewer's token cannot write.
    status, body = api(
        gw, "POST", "/api/v1/environments/prod/endpoints", VIEWER, {"host": "x.acme.test"}
    )
    assert status == 403 and body["reason"] == "forbidden"
    console.shot()


def test_a_locked_environment_is_read_only(gw: Gateway, console: Console) -> None:
    page = console.page
    console.open(gw, ADMIN)
    expect(
        page.get_by_role("button", name="Remove www.acme.test")
    ).to_be_visible()  # prod: writable
    console.select("lifetime")
    expect(page.locator("#env-badges .badge-locked")).to_have_text("locked")
    expect(page.locator("#readonly-note")).to_contain_text(
        "Locked: this environment's list cannot be changed"
    )
    expect(row(page, "endpoints", "lt.acme.test")).to_have_count(1)
    expect(page.locator("#add-form")).to_be_hidden()
    expect(write_buttons(page)).to_have_count(0)
    status, body = api(
        gw, "POST", "/api/v1/environments/lifetime/endpoints", ADMIN, {"host": "x.acme.test"}
    )
    assert status == 403 and body["reason"] == "locked"
    assert entries(gw, "lifetime") == ["lt.acme.test"]
    console.shot()


def test_hostile_host_values_are_shown_as_text(gw: Gateway, console: Console) -> None:
    page, port = console.page, gw.port("public")
    for value in (HOSTILE, HOSTILE2):
        assert get(port, value).status == 400  # malformed_host: lands in the blocked list
    status, body = api(gw, "GET", "/api/v1/blocked-hosts?environment=prod", VIEWER)
    assert status == 200
    assert {HOSTILE, HOSTILE2} <= {r["host"] for r in body["environments"]["prod"]}
    console.open(gw, ADMIN)
    for value in (HOSTILE, HOSTILE2):
        cell = page.locator("#blocked td.host").get_by_text(value, exact=True)
        expect(cell).to_have_count(1)
        assert cell.inner_text() == value
        r = row(page, "blocked", value)
        expect(r).to_contain_text("malformed host")
        expect(r.get_by_role("button")).to_have_count(0)  # not valid as an entry
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 1  # app.js only
    assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0
    page.wait_for_timeout(600)  # a poll later: still text, still no dialog
    assert page.locator("img").count() == 0
    console.shot()  # also asserts that no alert() fired


def test_candidate_disagreements_are_shown(gw: Gateway, console: Console) -> None:
    page, port = console.page, gw.port("public")
    for _ in range(2):
        assert get(port, "new.acme.test").status == 503  # only the candidate allows it
    for _ in range(3):
        assert get(port, "api.acme.test").status == 200  # only the live list allows it
    m = gw.metrics()
    newly = {
        d: int(
            metric_sum(m, "gateway_candidate_disagreements_total", environment="prod", direction=d)
        )
        for d in ("newly_blocked", "newly_allowed")
    }
    assert newly["newly_blocked"] >= 3 and newly["newly_allowed"] >= 2
    status, body = api(gw, "GET", "/api/v1/environments/prod", VIEWER)
    assert status == 200 and body["candidate_disagreements"] == newly
    console.open(gw, VIEWER)
    expect(page.locator("#candidate-card")).to_be_visible()
    expect(page.locator("#dis-blocked")).to_have_text(str(newly["newly_blocked"]))
    expect(page.locator("#dis-allowed")).to_have_text(str(newly["newly_allowed"]))
    expect(row(page, "candidate", "new.acme.test")).to_contain_text("added")
    expect(row(page, "candidate", "api.acme.test")).to_contain_text("removed")
    expect(row(page, "candidate", "www.acme.test")).not_to_have_class("differs")
    console.select("staging")
    expect(page.locator("#candidate-card")).to_be_hidden()  # no candidate list
    console.select("prod")
    console.shot()


def test_management_external_is_read_only_and_says_where(
    upstream: Upstream, browser: Browser, console: Console, tmp_path: Path
) -> None:
    page = console.page
    cfg = config(upstream, management="external")
    with running_gateway(cfg, tmp_path, "--admin-tokens", str(tokens_file(tmp_path))) as ext:
        assert get(ext.port("public"), "ext-unknown.acme.test").status == 503
        console.open(ext, ADMIN)
        banner = page.locator("#banner-external")
        expect(banner).to_contain_text("Read-only: this list is managed externally.")
        expect(banner).to_contain_text(f"change {ext.config_path} at its source")
        expect(row(page, "blocked", "ext-unknown.acme.test")).to_have_count(1)
        expect(page.locator("#readonly-note")).to_contain_text("managed externally")
        expect(page.locator("#add-form")).to_be_hidden()
        expect(write_buttons(page)).to_have_count(0)
        status, body = api(
            ext, "POST", "/api/v1/environments/prod/endpoints", ADMIN, {"host": "x.acme.test"}
        )
        assert status == 409 and str(ext.config_path) in body["error"]
        console.shot()


def test_without_a_tokens_file_the_console_reads_only(
    upstream: Upstream, console: Console, tmp_path: Path
) -> None:
    page = console.page
    with running_gateway(config(upstream), tmp_path) as open_gw:
        console.open(open_gw)
        expect(page.locator("#open-reads")).to_contain_text("runs without a tokens file")
        page.get_by_role("button", name="Continue read-only").click()
        expect(page.locator("#who")).to_have_text("anonymousviewer")
        expect(page.locator("#envs tbody tr")).to_have_count(3)
        expect(row(page, "endpoints", "www.acme.test")).to_have_count(1)
        expect(page.locator("#add-form")).to_be_hidden()
        expect(write_buttons(page)).to_have_count(0)
        console.shot()
