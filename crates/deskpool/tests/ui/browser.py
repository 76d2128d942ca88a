"""Drives deskpool's web page in Debian's headless Chromium (Playwright for Python).

Started by crates/deskpool/tests/ui.rs against a real `deskpool serve`, PostgreSQL and the
simulator; never on its own. Everything it needs comes from the environment:

  DESKPOOL_UI_URL         base URL of the daemon (http://127.0.0.1:PORT)
  DESKPOOL_UI_POOL        the pool to watch fill (target 3, bounds 1..=8)
  DESKPOOL_UI_HELPDESK    secrets of a helpdesk, a viewer and an admin token
  DESKPOOL_UI_VIEWER
  DESKPOOL_UI_ADMIN
  DESKPOOL_UI_SHOTS       directory for the screenshots
  DESKPOOL_CHROMIUM       the browser (default /usr/bin/chromium)

Prints one JSON line on stdout as its last line: {"ok": true, ...} or {"ok": false, "error": ...}
and exits 0 only when every step passed.
"""

import json
import os
import re
import sys
import tempfile
import traceback

from playwright.sync_api import expect, sync_playwright

URL = os.environ["DESKPOOL_UI_URL"]
POOL = os.environ["DESKPOOL_UI_POOL"]
HELPDESK = os.environ["DESKPOOL_UI_HELPDESK"]
VIEWER = os.environ["DESKPOOL_UI_VIEWER"]
ADMIN = os.environ["DESKPOOL_UI_ADMIN"]
SHOTS = os.environ["DESKPOOL_UI_SHOTS"]
CHROMIUM = os.environ.get("DESKPOOL_CHROMIUM", "/usr/bin/chromium")
# Clones take a few hundred ms in the simulator; the page polls every 2 s.
PATIENCE_MS = 60_000
expect.set_options(timeout=PATIENCE_MS)

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

result = {"ok": False, "screenshots": [], "steps": []}
console_problems = []


def step(name):
    result["steps"].append(name)
    print(f"browser: {name}", file=sys.stderr, flush=True)


def shot(page, name):
    path = os.path.join(SHOTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    result["screenshots"].append(path)


def watch(page):
    # A CSP violation or a script error is a failure of the page, whatever else works. The
    # browser also logs each 4xx answer; the scenario provokes those on purpose (bad token,
    # out-of-bounds size, a taken name) and checks the page shows them.
    def on_console(msg):
        if msg.type == "error" and not msg.text.startswith(
            "Failed to load resource: the server responded with a status of 4"
        ):
            console_problems.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: console_problems.append(f"page error: {e}"))


def sign_in(page, token):
    page.goto(URL + "/")
    expect(page).to_have_url(URL + "/ui/")
    page.fill("#token", token)
    page.keyboard.press("Enter")


def pool_row(page):
    return page.locator(f'tr[data-pool="{POOL}"]')


def cell(row, label):
    return row.locator(f'td[data-label="{label}"]')


def ready_desktops(page):
    return page.locator('tr[data-desktop][data-state="ready"]')


def desktop_names(page):
    return set(page.locator("tr[data-desktop]").evaluate_all("rows => rows.map(r => r.dataset.desktop)"))


def new_page(browser, width=1100, height=800):
    # A new tab has its own sessionStorage: each role signs in afresh.
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": height})
    page.set_default_timeout(PATIENCE_MS)
    watch(page)
    return page


def run(browser):
    # 1. A bad token: a clear sign-in error, still on the sign-in form.
    page = new_page(browser)
    step("bad token")
    sign_in(page, "dpt_" + "0" * 64)
    expect(page.locator("#signin-error")).to_contain_text("Sign-in failed: the API token is unknown or revoked")
    expect(page.locator("#signin")).to_be_visible()
    shot(page, "1-sign-in-error")
    page.close()

    # 2. Helpdesk signs in (keyboard only) and sees the pool fill.
    page = new_page(browser)
    step("helpdesk signs in")
    sign_in(page, HELPDESK)
    row = pool_row(page)
    expect(cell(row, "Target")).to_have_text("3")
    expect(cell(row, "Ready")).to_have_text("3")
    expect(cell(row, "State")).to_have_text("ok")
    assert "dpt_" not in page.url, "the token is in the URL"
    assert page.evaluate("document.cookie") == "", "the page set a cookie"
    assert page.evaluate("sessionStorage.getItem('deskpool.token')") == HELPDESK
    assert page.evaluate("localStorage.length") == 0, "the token is in localStorage"
    shot(page, "2-pools")

    # 3. Opens the pool by keyboard and resizes it within the bounds shown.
    step("helpdesk resizes")
    row.locator("a").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#view h1")).to_have_text(f"Pool {POOL}")
    expect(page.locator("#target-bounds")).to_have_text("between 1 and 8")
    expect(ready_desktops(page)).to_have_count(3)
    page.fill("#target-size", "99")
    page.keyboard.press("Enter")
    expect(page.locator("#resize-error")).to_contain_text("outside this pool's bounds 1..=8")
    page.fill("#target-size", "4")
    page.keyboard.press("Enter")
    expect(page.locator("#resize-error")).to_be_empty()
    expect(page.locator('dd[data-field="target"]')).to_have_text("4")
    expect(ready_desktops(page)).to_have_count(4)
    expect(page.locator("#pause")).to_have_count(0)  # admins only
    shot(page, "3-pool")

    # 4. Replaces a desktop, with a confirmation, and sees the replacement appear.
    step("helpdesk replaces a desktop")
    before = desktop_names(page)
    victim = sorted(before)[0]
    page.get_by_role("button", name=f"Replace desktop {victim}").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text(victim)
    shot(page, "4-replace-confirm")
    page.locator("#confirm-ok").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(f'tr[data-desktop="{victim}"]')).to_have_count(0)
    expect(ready_desktops(page)).to_have_count(4)
    after = desktop_names(page)
    replacement = sorted(after - before)
    assert len(replacement) == 1, f"expected one new desktop, got {replacement} ({before} -> {after})"
    result["replaced"] = victim
    result["replacement"] = replacement[0]
    shot(page, "5-pool-replaced")

    # 5. The events page, filtered by pool, tells the story with the helpdesk's name.
    step("events page")
    page.get_by_role("link", name=f"All events of pool {POOL}").click()
    expect(page.locator("#view h1")).to_have_text("Events")
    expect(page.locator("#event-pool")).to_have_value(POOL)
    expect(page.locator("tbody")).to_contain_text("desktop_deleting")
    expect(page.locator("tbody")).to_contain_text("pool_resized")
    expect(page.locator("tbody")).to_contain_text("ui-helpdesk")
    shot(page, "6-events")

    # Phone width: the overview still shows every column, as labelled cards.
    step("phone width")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(URL + "/ui/#/")
    expect(cell(pool_row(page), "Ready")).to_have_text("4")
    shot(page, "7-pools-phone")
    page.close()

    # 6. A viewer sees the pool but no resize or replace control.
    step("viewer")
    page = new_page(browser)
    sign_in(page, VIEWER)
    expect(cell(pool_row(page), "Ready")).to_have_text("4")
    page.goto(URL + f"/ui/#/pools/{POOL}")
    expect(ready_desktops(page)).to_have_count(4)
    expect(page.locator("#target-size")).to_have_count(0)
    expect(page.locator("#resize-form")).to_have_count(0)
    expect(page.get_by_role("button", name="Replace desktop")).to_have_count(0)
    expect(page.locator("#nav-tokens")).to_be_hidden()
    shot(page, "8-pool-viewer")
    page.close()

    # 7. An admin pauses and resumes the pool and makes a token on the tokens page.
    step("admin")
    page = new_page(browser)
    sign_in(page, ADMIN)
    expect(pool_row(page)).to_be_visible()
    page.goto(URL + f"/ui/#/pools/{POOL}")
    page.locator("#pause").click()
    expect(page.locator('dd[data-field="state"]')).to_have_text("ok · paused")
    expect(page.locator("#pause")).to_have_text("Resume")
    page.locator("#pause").click()
    expect(page.locator('dd[data-field="state"]')).to_have_text("ok")
    page.locator("#nav-tokens").click()
    expect(page.locator("#view h1")).to_have_text("Tokens")
    page.fill("#new-token-name", "ui-made")
    page.select_option("#new-token-role", "viewer")
    page.keyboard.press("Enter")
    secret = page.locator("#new-token-secret")
    expect(secret).to_have_value(re.compile(r"^dpt_[0-9a-f]{64}$"))
    expect(page.locator('tr[data-token="ui-made"]')).to_contain_text("active")
    # A name already in use: the API's message, next to the form.
    page.fill("#new-token-name", "ui-made")
    page.keyboard.press("Enter")
    expect(page.locator("#token-error")).to_contain_text("an active token with that name already exists")
    result["made_token_works"] = page.evaluate(
        "async (s) => (await fetch('/api/v1/whoami', {headers: {Authorization: 'Bearer ' + s}})).status",
        secret.input_value(),
    ) == 200
    shot(page, "9-tokens")
    page.close()

    if console_problems:
        raise AssertionError(f"console errors: {console_problems}")
    result["ok"] = True


def main():
    os.makedirs(SHOTS, exist_ok=True)
    stale = os.path.join(SHOTS, "failure.png")
    if os.path.exists(stale):
        os.remove(stale)
    profile = tempfile.mkdtemp(prefix="deskpool-chromium-")
    with sync_playwright() as p:
        # A fresh profile per run.
        # Playwright passes the profile as --user-data-dir; its own browser download is never used.
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            run(browser)
        except Exception as e:  # reported as the result, with the page as it was
            result["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
            try:
                for page in browser.pages:
                    shot(page, "failure")
            except Exception:
                pass
        finally:
            browser.close()
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
