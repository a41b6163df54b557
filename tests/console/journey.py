"""The console's user journey in a real headless Chromium, run by tests/console_browser.rs.

Logs in with an admin token; creates a key and reads its secret once; calls the gateway with it
through the official openai SDK; finds the request in the key's usage and recent requests; edits
the key's models and guardrails and sees a removed model refused and a request blocked by the
added guardrail, on the key page too; pauses the key and sees it refused; rotates it
with a grace period; deletes it; logs out. Then logs in as a viewer, who sees the pages without any control
that changes a key. Saves a screenshot of every page on the way.

Environment: KEYGATE_CONSOLE (the admin listener's base URL), KEYGATE_ADMIN_BEARER (the token),
KEYGATE_VIEWER_BEARER (a viewer's token), KEYGATE_GATEWAY (the data plane's /v1 URL), KEYGATE_SCREENSHOTS (a directory), CHROMIUM and
CHROMEDRIVER (the binaries). Exits 0 when every step passed; otherwise prints the failed step,
the page's text and the browser's console log, and exits 1.
"""
import os
import shutil
import sys
import tempfile
import time
import traceback

import openai
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

CONSOLE = os.environ["KEYGATE_CONSOLE"].rstrip("/")
TOKEN = os.environ["KEYGATE_ADMIN_BEARER"]
VIEWER = os.environ["KEYGATE_VIEWER_BEARER"]
GATEWAY = os.environ["KEYGATE_GATEWAY"]
SHOTS = os.environ["KEYGATE_SCREENSHOTS"]
KEY_ID = "journey-key"

options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# A fresh profile each run, and nothing the browser would fetch on its own: the journey must
# not depend on the network or on an earlier run.
profile = tempfile.mkdtemp(prefix="keygate-console-journey-")
for arg in ("--headless", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--window-size=1400,1600", f"--user-data-dir={profile}"):
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(
    service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 15)
shot_no = 0


def shot(name):
    global shot_no
    shot_no += 1
    driver.save_screenshot(os.path.join(SHOTS, f"{shot_no:02d}-{name}.png"))


def heading():
    return wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "main h1")))


def wait_heading(text):
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), text))


def main_text():
    return driver.find_element(By.ID, "main").text


def click_button(text, scope=None):
    scope = scope or driver
    button = wait.until(lambda d: next(
        (b for b in scope.find_elements(By.TAG_NAME, "button") if b.text.strip() == text
         and b.is_displayed() and b.is_enabled()), None))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()


def labelled(label_text):
    """The control a <label> with exactly this text names: also a check that it is labelled."""
    label = wait.until(lambda d: next(
        (l for l in d.find_elements(By.TAG_NAME, "label") if l.text.strip() == label_text), None))
    control = driver.find_element(By.ID, label.get_attribute("for"))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", control)
    return control


def open_key_page():
    driver.get(f"{CONSOLE}/ui/#/keys/{KEY_ID}")
    wait_heading(f"Key {KEY_ID}")


def sdk(secret):
    return openai.OpenAI(base_url=GATEWAY, api_key=secret, max_retries=0, timeout=20)


def chat(secret, model):
    return sdk(secret).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello from the console journey"}])


def refused(secret, model, status, code):
    try:
        chat(secret, model)
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        got = (body.get("error") or body).get("code")
        assert e.status_code == status and got == code, \
            f"expected {status} {code}, got {e.status_code} {got}"
        return
    raise AssertionError(f"the gateway served {model} with a key it should refuse ({code})")


def until(check, what, timeout=15):
    """Refreshes the key page until `check()` holds: usage is booked a moment after the answer."""
    deadline = time.time() + timeout
    open_key_page()
    while True:
        click_button("Refresh")
        wait_heading(f"Key {KEY_ID}")
        try:
            WebDriverWait(driver, 3).until(lambda d: check())
            return
        except TimeoutException:
            if time.time() > deadline:
                raise AssertionError(f"the key page never showed {what}")


def step_login():
    driver.get(f"{CONSOLE}/ui/")
    wait.until(on_login_page)
    shot("login")
    token = labelled("Admin token")
    token.send_keys("not-the-token-but-long-enough-000")
    token.send_keys(Keys.ENTER)
    wait.until(EC.text_to_be_present_in_element((By.ID, "login-error"), "not right"))
    token.clear()
    token.send_keys(TOKEN)
    token.send_keys(Keys.ENTER)
    wait_heading("Overview")
    assert "Signed in as" in driver.find_element(By.ID, "who").text
    shot("overview")
    step_keyboard()


def step_keyboard():
    """The shell works from the keyboard: from the page's header, Tab walks the navigation with a
    visible focus ring, Shift+Tab goes back, and Enter follows a link."""
    # A click on plain text moves the browser's starting point for Tab there.
    driver.find_element(By.CSS_SELECTOR, "header .brand").click()
    focused = driver.switch_to.active_element
    seen = []
    for _ in range(6):
        focused.send_keys(Keys.TAB)
        focused = driver.switch_to.active_element
        outline = driver.execute_script(
            "const s = getComputedStyle(arguments[0]); return s.outlineStyle + ' ' + s.outlineWidth",
            focused)
        assert not outline.startswith("none"), f"no visible focus on {focused.text!r}: {outline}"
        seen.append(focused.text)
        if focused.text == "Workloads":
            break
    assert seen[:2] == ["Overview", "Keys"], f"Tab order: {seen}"
    focused.send_keys(Keys.SHIFT, Keys.TAB)
    back = driver.switch_to.active_element
    assert back.text == seen[-2], f"Shift+Tab from {seen[-1]!r} reached {back.text!r}"
    back.send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    focused.send_keys(Keys.ENTER)
    wait_heading("Workloads")


def step_create():
    driver.find_element(By.LINK_TEXT, "Keys").click()
    wait_heading("Keys")
    shot("keys")
    driver.find_element(By.LINK_TEXT, "Create key").click()
    wait_heading("Create key")
    labelled("Id").send_keys(KEY_ID)
    labelled("Workload").send_keys("app")
    labelled("Owner").send_keys("qa-team")
    labelled("Description").send_keys("made by the browser journey")
    for model in ("m1 (p1)", "m2 (p1)"):
        labelled(model).click()
    labelled("Daily budget (USD)").send_keys("5")
    shot("create-form")
    click_button("Create key", driver.find_element(By.CSS_SELECTOR, "form.key-form"))
    secret_el = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "output.secret")))
    secret = secret_el.text.strip()
    assert secret.startswith("kg_"), f"not a key secret: {secret!r}"
    assert "never be shown again" in main_text()
    assert any(b.text == "Copy secret" for b in driver.find_elements(By.TAG_NAME, "button"))
    shot("create-secret")
    open_key_page()
    assert secret not in driver.page_source, "the secret is shown again on the key page"
    return secret


def step_use(secret):
    reply = chat(secret, "m1")
    assert reply.choices, "the gateway answered without choices"

    def booked():
        rows = driver.find_elements(By.CSS_SELECTOR, "main table tbody tr")
        return any("m1" in r.text and "200" in r.text for r in rows)
    until(booked, "the request in the recent requests table")
    text = main_text()
    assert "Requests by model" in text and "Requests per day" in text, "usage charts missing"
    assert driver.find_elements(By.CSS_SELECTOR, "figure.chart svg rect.bar"), "no bars drawn"
    shot("key-used")


def step_edit(secret):
    open_key_page()
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    m2 = labelled("m2 (p1)")
    assert m2.is_selected(), "m2 should be checked: the key was created with it"
    m2.click()
    no_secrets = labelled("no-secrets")
    assert not no_secrets.is_selected(), "the key was created without guardrails of its own"
    no_secrets.click()
    click_button("Save changes")
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main"), "Saved: models, guardrails"))
    settings = driver.find_element(By.CSS_SELECTOR, "dl.settings").text
    assert "no-secrets (added: no-secrets)" in settings, settings
    shot("key-edited")
    refused(secret, "m2", 403, "model_not_allowed")
    chat(secret, "m1")
    try:
        sdk(secret).chat.completions.create(model="m1", messages=[
            {"role": "user", "content": "my key is AKIAIOSFODNN7EXAMPLE, keep it safe"}])
        raise AssertionError("a request carrying an AWS key passed the no-secrets guardrail")
    except openai.BadRequestError as e:
        assert e.code == "content_policy_violation", e

    def refusal_listed():
        return "model_not_allowed" in main_text()
    until(refusal_listed, "the refused model in the recent requests")

    def block_listed():
        blocks = driver.find_element(By.XPATH, "//section[h2='Guardrail blocks']").text
        return "no-secrets (aws_access_key): block" in blocks and "Blocked today\n1" in blocks
    until(block_listed, "the guardrail block")
    blocks = driver.find_element(By.XPATH, "//section[h2='Guardrail blocks']")
    driver.execute_script("arguments[0].scrollIntoView()", blocks)
    shot("key-guardrail-block")


def step_pause(secret):
    open_key_page()
    click_button("Pause key")
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main .title-row"), "paused"))
    shot("key-paused")
    refused(secret, "m1", 403, "key_paused")
    click_button("Resume key")
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main .title-row"), "active"))
    chat(secret, "m1")


def step_rotate(secret):
    open_key_page()
    grace = labelled("Grace period for the old secret")
    grace.clear()
    grace.send_keys("1h")
    click_button("Rotate secret")
    new_el = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".action-result output.secret")))
    new_secret = new_el.text.strip()
    assert new_secret.startswith("kg_") and new_secret != secret
    assert "keeps working until" in main_text()
    shot("key-rotated")
    chat(new_secret, "m1")
    chat(secret, "m1")  # the old secret, within its grace period
    return new_secret


def step_delete(new_secret):
    open_key_page()
    confirm = labelled(f"Type {KEY_ID} to confirm deletion")
    delete = next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text == "Delete key")
    assert not delete.is_enabled(), "delete is possible before the id is typed"
    confirm.send_keys(KEY_ID[:-1])
    assert not delete.is_enabled(), "delete is possible with a wrong id typed"
    confirm.send_keys(KEY_ID[-1])
    click_button("Delete key")
    wait_heading("Keys")
    wait.until(EC.text_to_be_present_in_element((By.ID, "main"), f"Key {KEY_ID} deleted"))
    shot("keys-after-delete")
    refused(new_secret, "m1", 401, "invalid_api_key")


def step_workloads():
    driver.find_element(By.LINK_TEXT, "Workloads").click()
    wait_heading("Workloads")
    shot("workloads")
    driver.find_element(By.CSS_SELECTOR, "main table a[href='#/workloads/app']").click()
    wait_heading("Workload app")
    usage = driver.find_element(By.XPATH, "//section[h2='Usage by key this month']//tbody").text
    assert KEY_ID in usage, f"the key's usage is not on its workload's page: {usage!r}"
    shot("workload")


def on_login_page(d):
    # A redirect keeps the URL's #fragment: /ui/#/keys lands on /ui/login#/keys.
    return d.current_url.split("#")[0] == f"{CONSOLE}/ui/login"


def step_logout():
    click_button("Log out")
    wait.until(on_login_page)
    driver.get(f"{CONSOLE}/ui/#/keys")
    wait.until(on_login_page)
    shot("logged-out")


def step_viewer():
    driver.get(f"{CONSOLE}/ui/login")
    token = labelled("Admin token")
    token.send_keys(VIEWER)
    token.send_keys(Keys.ENTER)
    wait_heading("Overview")
    assert "(viewer)" in driver.find_element(By.ID, "who").text
    nav = driver.find_element(By.CSS_SELECTOR, "header nav").text
    assert "Create key" not in nav, f"a viewer is offered Create key: {nav!r}"
    driver.find_element(By.LINK_TEXT, "Keys").click()
    wait_heading("Keys")
    assert not driver.find_elements(By.LINK_TEXT, "Create key")
    driver.find_element(By.LINK_TEXT, "seed").click()
    wait_heading("Key seed")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "figure.chart")))
    buttons = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "main button")]
    assert buttons == ["Refresh"], f"a viewer sees write controls: {buttons}"
    assert "Edit settings" not in main_text()
    shot("viewer-key")
    driver.get(f"{CONSOLE}/ui/#/keys/new")
    wait.until(EC.text_to_be_present_in_element((By.ID, "main"), "Your role is viewer"))
    assert not driver.find_elements(By.CSS_SELECTOR, "main form")
    step_logout()


def run():
    step_login()
    secret = step_create()
    step_use(secret)
    step_edit(secret)
    step_pause(secret)
    new_secret = step_rotate(secret)
    step_workloads()
    step_delete(new_secret)
    step_logout()
    step_viewer()


try:
    run()
    # The CSP forbids inline code: a violation would show here as a console error.
    errors = [l for l in driver.get_log("browser") if l["level"] == "SEVERE"
              and "401" not in l["message"] and "403" not in l["message"]]
    assert not errors, f"browser console errors: {errors}"
    print(f"journey: every step passed; {shot_no} screenshots in {SHOTS}")
except Exception:
    traceback.print_exc()
    try:
        shot("failure")
        print("--- page text ---\n" + driver.find_element(By.TAG_NAME, "body").text)
        print("--- browser console ---")
        for line in driver.get_log("browser"):
            print(line)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    sys.exit(1)
driver.quit()
shutil.rmtree(profile, ignore_errors=True)
