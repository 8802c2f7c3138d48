"""End-to-end tests of the review console in headless Chromium (Playwright driving Debian's
/usr/bin/chromium): a real `fraud serve`, transactions scored through the API, people logging
in with a password and a one-time code, the queue, a case, a label that reaches the decision
log, and the refusals (wrong password, wrong or replayed code, no session, no CSRF token,
lock-out, a user opening far more cases than usual). Screenshots of the queue, a case and the
overview are written to target/console-screenshots/ (or $SCREENSHOT_DIR)."""

import base64
import hashlib
import hmac
import json
import os
import random
import re
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[3]
FRAUD = os.environ.get("FRAUD_BIN", str(ROOT / "target" / "debug" / "fraud"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "target" / "console-screenshots"))
PASSWORD = "correct horse battery staple"


def totp(secret: str, step: int) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = h[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", h[off : off + 4])[0] & 0x7FFFFFFF) % 1_000_000)


def code(secret: str) -> str:
    return totp(secret, int(time.time()) // 30)


def luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_user(data: Path, name: str, role: str) -> str:
    out = subprocess.run(
        [FRAUD, "users", "create", "--role", role, "--name", name, "--data-dir", str(data)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert PASSWORD not in out
    return re.search(r"^secret: ([A-Z2-7]+)$", out, re.M).group(1)


class Service:
    def __init__(self, tmp: Path):
        self.data = tmp / "data"
        self.secrets = {
            "alice": create_user(self.data, "alice", "analyst"),
            "bob": create_user(self.data, "bob", "analyst"),
            "carol": create_user(self.data, "carol", "analyst"),
            "root": create_user(self.data, "root", "admin"),
            "rita": create_user(self.data, "rita", "admin"),
            "ruth": create_user(self.data, "ruth", "admin"),
            "dave": create_user(self.data, "dave", "analyst"),
        }
        port = free_port()
        self.base = f"http://localhost:{port}"
        cfg = tmp / "fraud.toml"
        cfg.write_text(
            f'bind = "127.0.0.1:{port}"\n'
            f'shadow_model = "{ROOT / "datasets" / "demo" / "model.fgb"}"\n'
            "[shadow]\ntraffic = 0.5\n"
            "[thresholds]\nreview = 0.0\ndecline = 0.999\n"
            "[insider]\nwindow_s = 60.0\nmin_reads = 8.0\nfactor = 5.0\n"
            "[console]\nmax_failures = 3\n"
        )
        self.log = open(tmp / "serve.log", "w")
        self.proc = subprocess.Popen(
            [FRAUD, "serve", "--config", str(cfg)],
            env={**os.environ, "FRAUD_DATA_DIR": str(self.data)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=2)
                break
            except Exception:
                assert self.proc.poll() is None, (tmp / "serve.log").read_text()
                assert time.time() < deadline, "the server did not start"
                time.sleep(0.1)
        self.key = (self.data / "dev-api-key").read_text().strip()
        rng = random.Random(7)
        self.cards = []
        merchants = ["<script>alert(1)</script>", 'M&M\'s "corner" shop', "grocer-12"]
        for i in range(14):
            card = luhn_card(rng)
            self.cards.append(card)
            tx = {
                "transaction_id": f"case-{i:02d}",
                "timestamp": f"2024-05-0{1 + i % 3}T10:{i:02d}:00Z",
                "amount": f"{10 + i * 7}.25",
                "currency": "EUR",
                "card_number": card,
                "customer_id": f"customer-{i}",
                "merchant_id": merchants[i % 3],
                "mcc": "5411" if i % 2 else "5999",
                "terminal_id": "T1",
                "channel": "ecommerce",
                "card_country": "BE",
                "merchant_country": "FR",
                "ip_country": "NL",
            }
            answer = self.api("POST", "/v1/score", tx)
            assert answer["decision"] == "review", answer

    def api(self, method, path, body=None):
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("console"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (the test command installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def login(page, service, name, password=PASSWORD, one_time=None):
    page.goto(service.base + "/console/login")
    page.fill("#name", name)
    page.fill("#password", password)
    page.fill("#code", one_time if one_time is not None else code(service.secrets[name]))
    page.click("button[type=submit]")
    page.wait_for_load_state()


def assert_no_card_numbers(service, html):
    for card in service.cards:
        assert card not in html, "a full card number is in the page"
        assert card[6:12] not in html.replace("******", ""), "the hidden digits are in the page"


def test_without_a_session_every_page_goes_to_login(service, browser):
    page = browser.new_context().new_page()
    for path in ["/console/", "/console/overview", "/console/cases/case-00"]:
        page.goto(service.base + path)
        assert page.url.endswith("/console/login"), page.url
    # A state-changing post without a session changes nothing.
    r = page.request.post(
        service.base + "/console/cases/case-00", form={"action": "fraud"}, max_redirects=0
    )
    assert r.status == 303 and r.headers["location"] == "/console/login"
    assert service.api("GET", "/v1/decisions/case-00")["response"]["decision"] == "review"
    # The console's headers: strict CSP, no framing, no caching.
    r = page.request.get(service.base + "/console/login")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


def test_wrong_password_and_wrong_code_are_refused(service, browser):
    page = browser.new_context().new_page()
    login(page, service, "alice", password="not the password at all")
    assert page.url.endswith("/console/login")
    assert "Wrong user name, password or one-time code" in page.inner_text("#login-error")
    right = code(service.secrets["alice"])
    wrong = "000000" if right != "000000" else "111111"
    login(page, service, "alice", one_time=wrong)
    assert "Wrong user name, password or one-time code" in page.inner_text("#login-error")


def test_queue_case_and_label_end_to_end(service, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    used = code(service.secrets["alice"])
    login(page, service, "alice", one_time=used)
    service.alice_code = used
    assert page.url.endswith("/console/"), page.url
    cookie = [c for c in context.cookies() if c["name"] == "fraud_session"][0]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    rows = page.locator("table.queue tbody tr")
    assert rows.count() == 14
    # Oldest first; amounts, masked cards, merchants shown as text (never as markup).
    first = rows.nth(0).inner_text()
    assert "10.25 EUR" in first
    assert re.search(r"\d{6}\*{6}\d{4}", first)
    html = page.content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert page.locator("script").count() == 0
    assert "<script>alert" in page.inner_text("table.queue")
    assert_no_card_numbers(service, html)
    assert page.locator("svg.reasons").count() == 14
    page.screenshot(path=str(SHOTS / "queue.png"), full_page=True)
    # Filters: merchant category and score band.
    page.fill("#mcc", "5411")
    page.click(".filters button[type=submit]")
    assert page.locator("table.queue tbody tr").count() == 7
    page.goto(service.base + "/console/")
    # Open the oldest case.
    page.locator("table.queue tbody tr").nth(0).locator("a").click()
    page.wait_for_load_state()
    assert "/console/cases/case-00" in page.url
    text = page.inner_text("main")
    assert "Case case-00" in text and "10.25 EUR" in text
    assert "Customer" in page.inner_text("main .help")  # hidden from analysts
    assert "customer-0" not in page.content()
    assert page.locator("h3", has_text="card").count() == 1  # the card's aggregates
    assert_no_card_numbers(service, page.content())
    page.screenshot(path=str(SHOTS / "case.png"), full_page=True)
    # Confirm fraud: back to the queue, one case fewer, the label in the decision log.
    page.click("button[value=fraud]")
    page.wait_for_load_state()
    assert "Case case-00 confirmed as fraud" in page.inner_text(".flash")
    assert page.locator("table.queue tbody tr").count() == 13
    log = (service.data / "log" / "decisions.log").read_text()
    records = [json.loads(line[65:]) for line in log.splitlines()]
    labels = [r for r in records if r["kind"] == "label" and r["key"] == "console:alice"]
    assert labels and labels[0]["data"]["transaction_id"] == "case-00"
    assert labels[0]["data"]["is_fraud"] is True
    cases = [r for r in records if r["kind"] == "case" and r["key"] == "console:alice"]
    assert cases[0]["data"] == {"transaction_id": "case-00", "action": "fraud"}
    views = [r for r in records if r["kind"] == "access" and r["key"] == "console:alice"]
    assert views and views[0]["data"]["transaction_id"] == "case-00"
    # Escalate another: it stays in the queue, marked.
    page.goto(service.base + "/console/cases/case-01")
    page.click("button[value=escalate]")
    page.wait_for_load_state()
    assert "escalated" in page.inner_text(".flash")
    assert "escalated" in page.locator("table.queue tbody tr").nth(0).inner_text()
    # A post without the CSRF token is refused and changes nothing.
    r = page.request.post(
        service.base + "/console/cases/case-02", form={"action": "legit"}, max_redirects=0
    )
    assert r.status == 403
    assert page.locator("table.queue tbody tr").count() == 13
    # The overview.
    page.click("nav >> text=Overview")
    page.wait_for_load_state()
    assert page.locator("svg.chart").count() == 2
    assert "13" in page.inner_text(".tiles")
    page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
    # The access review lists console users beside the API keys, with their recorded use.
    listing = subprocess.run(
        [FRAUD, "keys", "list", "--data-dir", str(service.data)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = next(l for l in listing.splitlines() if l.startswith("console:alice\t"))
    assert "analyst (console user)" in row and "\tactive\t" in row, listing
    # Log out: the session is gone.
    page.click(".logout button")
    page.wait_for_load_state()
    assert page.url.endswith("/console/login")
    page.goto(service.base + "/console/")
    assert page.url.endswith("/console/login")


def test_a_replayed_code_is_refused(service, browser):
    page = browser.new_context().new_page()
    login(page, service, "alice", one_time=service.alice_code)
    assert page.url.endswith("/console/login")
    assert "used already" in page.inner_text("#login-error")


def test_admins_see_every_recorded_field(service, browser):
    page = browser.new_context().new_page()
    login(page, service, "root")
    page.goto(service.base + "/console/cases/case-03")
    assert "customer-3" in page.inner_text("main")
    assert "Card token" in page.inner_text("main")


def test_repeated_failures_lock_the_user_out(service, browser):
    page = browser.new_context().new_page()
    for _ in range(3):
        login(page, service, "bob", password="wrong wrong wrong")
    login(page, service, "bob")
    assert "locked" in page.inner_text("#login-error")


def test_a_user_opening_far_more_cases_than_usual_is_paused(service, browser):
    page = browser.new_context().new_page()
    login(page, service, "carol")
    statuses = []
    for i in range(12):
        r = page.goto(service.base + f"/console/cases/case-{i + 2:02d}")
        statuses.append(r.status)
    assert statuses[:8] == [200] * 8, statuses
    assert statuses[-1] == 429, statuses
    assert "paused" in page.inner_text("main")
    log = (service.data / "log" / "decisions.log").read_text()
    assert '"kind":"alert"' in log and '"key":"console:carol"' in log


def test_rules_are_drafted_by_one_admin_and_approved_by_another(service, browser):
    page = browser.new_context().new_page()
    login(page, service, "rita")
    page.goto(service.base + "/console/rules")
    assert "version 1" in page.inner_text("main")
    page.fill(
        "#policy",
        '[thresholds]\nreview = 0.0\ndecline = 0.999\n\n[[rules]]\nname = "big_amounts"\n'
        'when = "tx.amount > 90.0"\naction = "decline"\n',
    )
    page.fill("#comment", "decline large amounts")
    page.click("text=Post the draft")
    page.wait_for_load_state()
    text = page.inner_text("main")
    assert "posted" in text and "You drafted it" in text, text
    assert re.search(r"Backtest on the last \d+ decisions", text), text
    assert "review->decline" in text, text
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "rules.png"), full_page=True)
    # Another admin approves it.
    other = browser.new_context().new_page()
    login(other, service, "ruth")
    other.goto(service.base + "/console/rules")
    other.click("text=Approve and publish")
    other.wait_for_load_state()
    assert "Version 2 is live." in other.inner_text("main")
    # Analysts see the live rules, read-only.
    reader = browser.new_context().new_page()
    login(reader, service, "dave")
    reader.goto(service.base + "/console/rules")
    seen = reader.inner_text("main")
    assert "big_amounts" in seen and "New draft" not in seen, seen
    # The champion / challenger comparison: the shadow decides for half the cards.
    assert "Champion / challenger" in seen and "challenger" in seen, seen
    arms = reader.inner_text("#arms-h + p")
    assert "50%" in arms, arms
    assert "Approve and publish" not in seen and "Discard" not in seen, seen
    # It decides, and every step is in the decision log.
    answer = service.api(
        "POST",
        "/v1/score",
        {
            "transaction_id": "rules-1",
            "timestamp": "2024-05-04T10:00:00Z",
            "amount": "500.00",
            "currency": "EUR",
            "card_number": luhn_card(random.Random(99)),
            "merchant_id": "grocer-12",
            "mcc": "5411",
            "channel": "ecommerce",
        },
    )
    assert answer["decision"] == "decline" and answer["rules_fired"] == ["big_amounts"], answer
    log = (service.data / "log" / "decisions.log").read_text()
    assert '"kind":"policy"' in log and '"key":"console:ruth"' in log


def test_minimised_fields_and_session_expiry(tmp_path, browser):
    """A second service: analysts see only the merchant category, and sessions end after two
    idle seconds."""
    data = tmp_path / "data"
    secret = create_user(data, "dana", "analyst")
    erin = create_user(data, "erin", "analyst")
    port = free_port()
    cfg = tmp_path / "fraud.toml"
    cfg.write_text(
        f'bind = "127.0.0.1:{port}"\n[thresholds]\nreview = 0.0\ndecline = 0.999\n'
        '[console]\nanalyst_fields = ["mcc"]\nidle_timeout_s = 4\nabsolute_timeout_s = 8\n'
    )
    with open(tmp_path / "serve.log", "w") as out:
        proc = subprocess.Popen(
            [FRAUD, "serve", "--config", str(cfg)],
            env={**os.environ, "FRAUD_DATA_DIR": str(data)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://localhost:{port}"
            deadline = time.time() + 30
            while True:
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=2)
                    break
                except Exception:
                    assert proc.poll() is None and time.time() < deadline
                    time.sleep(0.1)
            key = (data / "dev-api-key").read_text().strip()
            tx = {
                "transaction_id": "m-1", "timestamp": "2024-05-01T10:00:00Z", "amount": "5.00",
                "currency": "EUR", "card_number": "4111111111111111", "customer_id": "cust-9",
                "merchant_id": "merchant-secret", "mcc": "5411", "terminal_id": "term-secret",
                "card_country": "BE", "merchant_country": "FR", "ip_country": "NL",
            }
            req = urllib.request.Request(
                base + "/v1/score", data=json.dumps(tx).encode(), method="POST",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            urllib.request.urlopen(req, timeout=10).read()
            page = browser.new_context().new_page()
            page.goto(base + "/console/login")
            page.fill("#name", "dana")
            page.fill("#password", PASSWORD)
            page.fill("#code", code(secret))
            page.click("button[type=submit]")
            page.wait_for_load_state()
            html = page.content()
            for hidden in ["merchant-secret", "term-secret", "cust-9", "BE", "NL"]:
                assert hidden not in page.inner_text("table.queue"), hidden
            assert "5411" in html
            page.goto(base + "/console/cases/m-1")
            text = page.inner_text("main")
            for hidden in ["merchant-secret", "term-secret", "cust-9"]:
                assert hidden not in text, hidden
            assert "5411" in text
            # Active use keeps the session; idleness past 4 s ends it. (Margins of seconds
            # both ways, so that a loaded machine's slow page loads change nothing.)
            time.sleep(1.0)
            page.goto(base + "/console/")
            assert page.url.endswith("/console/")
            time.sleep(5.0)
            page.goto(base + "/console/")
            assert page.url.endswith("/console/login"), "an idle session survived"
            # However active, a session ends 8 s after login.
            page.fill("#name", "erin")
            page.fill("#password", PASSWORD)
            page.fill("#code", code(erin))
            page.click("button[type=submit]")
            page.wait_for_load_state()
            assert page.url.endswith("/console/")
            ends = []
            for _ in range(10):
                time.sleep(1.0)
                page.goto(base + "/console/")
                ends.append(page.url.endswith("/console/login"))
            assert ends[0] is False and ends[-1] is True, ends
        finally:
            proc.kill()
            proc.wait()
