"""The ranking page: headless Chromium through Playwright (the OS package's browser), the
server's access rules, and how prompts are shared between labellers."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from label_helpers import read_jsonl, write_candidates

from llm.label import server
from llm.label.store import LabelError, Store

ROOT = pathlib.Path(__file__).resolve().parents[1]
XSS = ['<script>window.__pwned = 1</script>', '<img src=x onerror="window.__pwned = 2">']
ROWS = [{"id": "p1", "prompt": "Which is safe?", "responses": [*XSS, "plain text"]},
        {"id": "p2", "prompt": "Say hi", "responses": ["hi", "hello", "hey"]},
        {"id": "p3", "prompt": "Say bye", "responses": ["bye", "ciao", "later"]},
        {"id": "p4", "prompt": "Count", "responses": ["1 2", "1 2 3", "one"]}]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    # CI installs the OS package (.ci/run); a machine without it fails here, never skips.
    pytest.fail("no chromium on PATH: install the OS package (apt-get install chromium); "
                "playwright install is never run")


@pytest.fixture
def browser():
    from playwright import sync_api  # the `peers` extra
    path = chromium_path()
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(out: pathlib.Path, port: int) -> subprocess.Popen:
    """scripts/label.py in human mode, returned once it serves."""
    proc = subprocess.Popen(
        [sys.executable, "scripts/label.py", "--config=configs/label.py", "--config.mode=human",
         f"--config.output_dir={out}", f"--config.label.port={port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    line = proc.stdout.readline()
    if "ranking page" not in line:
        proc.kill()
        raise AssertionError(f"the server did not start: {line}{proc.stdout.read()}")
    return proc


def wait_for_prompt(page, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#prompt")).to_have_text(text)


def check_shown_as_text(page) -> None:
    """The answers hold the model's text literally: no element made from it, no script run."""
    assert page.locator("#answers pre").all_text_contents() == ROWS[0]["responses"]
    assert page.locator("#answers img, #answers script").count() == 0
    assert page.evaluate("window.__pwned") is None


@pytest.mark.slow
def test_label_with_the_keyboard_undo_kill_restart_and_resume(tmp_path, browser):
    write_candidates(tmp_path, ROWS)
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#name", "ann")
        page.press("#name", "Enter")
        wait_for_prompt(page, "Which is safe?")
        check_shown_as_text(page)
        page.keyboard.press("3")  # best: the plain text, then the script: a full order
        page.keyboard.press("1")
        wait_for_prompt(page, "Say hi")
        assert page.text_content("#progress-text").startswith("1 / 4")
        page.keyboard.press("2")  # best only, then Enter
        page.keyboard.press("Enter")
        wait_for_prompt(page, "Say bye")
        page.keyboard.press("s")  # skip: revisited later
        wait_for_prompt(page, "Count")
        page.keyboard.press("2")
        page.keyboard.press("3")
        wait_for_prompt(page, "Say bye")  # the skipped prompt comes back at the end
        page.keyboard.press("u")  # undo the last ranking: its prompt comes back
        wait_for_prompt(page, "Count")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = start_server(tmp_path, port)
    try:
        page.reload()  # the name is remembered; the first unranked prompt comes first
        wait_for_prompt(page, "Count")  # (the skipped one comes back after it)
        assert page.text_content("#progress-text").startswith("2 / 4")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kinds = [r["kind"] for r in read_jsonl(tmp_path / "judgements.jsonl")]
    assert kinds == ["rank", "rank", "skip", "rank", "undo"]
    prefs = read_jsonl(tmp_path / "preferences.jsonl")
    pairs = [(r["chosen"], r["rejected"]) for r in prefs if "chosen" in r]
    assert pairs == [("plain text", XSS[0]), ("plain text", XSS[1]), (XSS[0], XSS[1]),
                     ("hello", "hi"), ("hello", "hey")]
    assert [r["outcome"] for r in prefs if "chosen" not in r] == ["skip"]
    assert {r["judge"] for r in prefs} == {"human:ann"}


@pytest.fixture
def running(tmp_path):
    """An in-process server on a free port with an access token; yields (url, store)."""
    write_candidates(tmp_path, ROWS)
    store = Store(tmp_path)
    httpd = server.make_server(store, port=0, token="s3cret")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", store
    httpd.shutdown()
    httpd.server_close()


def fetch(url: str, data: dict | None = None, headers: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    headers = {**({} if data is None else {"Content-Type": "application/json"}),
               **(headers or {})}
    request = urllib.request.Request(url, body, headers)
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def test_non_loopback_needs_a_token_and_requests_without_it_get_401(running):
    with pytest.raises(LabelError, match="label.host='0.0.0.0' is reachable"):
        server.check_bind("0.0.0.0", "")
    server.check_bind("0.0.0.0", "s3cret")
    server.check_bind("::1", "")
    url, store = running
    for path in ("/", "/label.js", "/api/next?labeller=ann"):
        assert fetch(url + path)[0] == 401
    assert fetch(url + "/api/next?labeller=ann", headers={"X-Label-Token": "wrong"})[0] == 401
    assert fetch(url + "/api/judge", {"labeller": "ann", "id": "p1", "kind": "tie"})[0] == 401
    assert (store.dir / "judgements.jsonl").read_text() == ""  # nothing recorded
    status, _, headers = fetch(url + "/?token=s3cret")
    assert status == 200 and "label_token=s3cret" in headers["Set-Cookie"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, body, _ = fetch(url + "/api/next?labeller=ann",
                            headers={"Cookie": "label_token=s3cret"})
    assert status == 200 and json.loads(body)["prompt"]["id"] == "p1"
    status, body, _ = fetch(url + "/api/judge", {"labeller": "ann", "id": "p1", "kind": "rank",
                                                 "ranking": [0, 0]},
                            {"X-Label-Token": "s3cret"})
    assert status == 400 and b"distinct answer indices" in body
    status, body, _ = fetch(url + "/api/judge", {"labeller": "ann", "id": "p1", "kind": "tie"},
                            {"X-Label-Token": "s3cret", "Content-Type": "text/plain"})
    assert status == 400 and b"application/json" in body  # what a cross-site form can send
    assert (store.dir / "judgements.jsonl").read_text() == ""  # nothing recorded


def test_a_tokenless_server_answers_only_its_own_host_names(tmp_path):
    write_candidates(tmp_path, ROWS)
    httpd = server.make_server(Store(tmp_path), port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        url = f"http://127.0.0.1:{port}/api/next?labeller=ann"
        assert fetch(url)[0] == 200
        assert fetch(url, headers={"Host": f"localhost:{port}"})[0] == 200
        # a DNS name rebound to 127.0.0.1 by some web page
        assert fetch(url, headers={"Host": f"evil.example:{port}"})[0] == 403
    finally:
        httpd.shutdown()
        httpd.server_close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LabelError, match="cannot listen there"):
            server.make_server(Store(tmp_path), port=taken.getsockname()[1])


@pytest.mark.slow
def test_model_text_stays_inert_even_without_the_pages_csp(running, browser):
    url, _ = running  # the CSP would block an injected script; the text must not need it
    page = browser.new_page(bypass_csp=True)
    page.goto(url + "/?token=s3cret")
    page.fill("#name", "bob")
    page.press("#name", "Enter")
    wait_for_prompt(page, "Which is safe?")
    check_shown_as_text(page)
    page.close()


def test_labellers_get_different_prompts_until_each_has_per_prompt_judgements(tmp_path):
    write_candidates(tmp_path, ROWS[:2])
    assigner = server.Assigner(Store(tmp_path), per_prompt=2)
    ann, bob = assigner.next("ann")["prompt"]["id"], assigner.next("bob")["prompt"]["id"]
    assert {ann, bob} == {"p1", "p2"}
    assigner.judge("ann", {"id": ann, "kind": "tie"})
    assigner.judge("bob", {"id": bob, "kind": "tie"})
    assert assigner.next("ann")["prompt"]["id"] == bob  # each prompt wants two judgements
    assigner.judge("ann", {"id": bob, "kind": "tie"})
    assert assigner.next("bob")["prompt"]["id"] == ann
    assigner.judge("bob", {"id": ann, "kind": "tie"})
    done = assigner.next("cat")
    assert done["prompt"] is None and done["progress"] == {"judged": 4, "total": 4, "mine": 0}
    with pytest.raises(LabelError, match="already judged"):
        assigner.judge("ann", {"id": ann, "kind": "tie"})
