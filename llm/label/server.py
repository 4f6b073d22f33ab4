"""The `human` mode: a small HTTP server for the ranking page (`static/`).

Python's own `http.server.ThreadingHTTPServer`: nothing to install, and the page needs four
JSON endpoints and three static files, no framework.

    GET  /                 the page (and a session cookie when a token is required)
    GET  /label.js, /label.css
    GET  /api/next?labeller=NAME   the labeller's next prompt and the progress
    POST /api/judge        {"labeller", "id", "kind": rank|tie|skip, "ranking": [i, ...]}
    POST /api/undo         {"labeller"}: undo the labeller's last judgement

A judgement is appended to the log and flushed to disk before the reply, so the page only
moves on once it is safe; a restart resumes from the log. Several labellers at once are
given different prompts (a prompt handed out is held for its labeller for `LEASE_S`) until
each prompt has `per_prompt` judgements. A non-loopback address needs an access token,
given as `?token=` once (then a cookie) or the `X-Label-Token` header; without it a request
gets 401.
"""

from __future__ import annotations

import hmac
import http.server
import importlib.resources
import ipaddress
import json
import threading
import time
import urllib.parse
from typing import Any

from llm.label.store import LabelError, Store

LEASE_S = 600.0
STATIC = {"/": ("index.html", "text/html"), "/label.js": ("label.js", "text/javascript"),
          "/label.css": ("label.css", "text/css")}
# Model text reaches the page as JSON and is shown with textContent; this forbids any
# script or resource the page does not serve itself, as a second line of defence.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 1 << 16


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str) -> None:
    """Refuse to serve beyond this machine without an access token."""
    if not is_loopback(host) and not token:
        raise LabelError(f"--config.label.host={host!r} is reachable from other machines: set "
                         "--config.label.token=SECRET (labellers open /?token=SECRET)")


class Assigner:
    """Which prompt each labeller sees next, from the store's active records."""

    def __init__(self, store: Store, per_prompt: int):
        if per_prompt < 1:
            raise LabelError(f"label.per_prompt={per_prompt}: expected >= 1")
        self.store, self.per_prompt = store, per_prompt
        self.leases: dict[str, tuple[str, float]] = {}  # prompt id -> (labeller, until)

    def _counts(self) -> tuple[dict[str, int], dict[str, set], dict[str, set]]:
        judged: dict[str, int] = {}
        mine: dict[str, set] = {}
        skipped: dict[str, set] = {}
        for r in self.store.active():
            if not r["judge"].startswith("human:"):
                continue
            name = r["judge"][len("human:"):]
            if r["kind"] == "skip":
                skipped.setdefault(name, set()).add(r["id"])
            else:
                judged[r["id"]] = judged.get(r["id"], 0) + 1
                mine.setdefault(name, set()).add(r["id"])
        return judged, mine, skipped

    def next(self, labeller: str) -> dict[str, Any]:
        """The labeller's next prompt (None when done) and the progress counts."""
        now = time.time()
        judged, mine, skipped = self._counts()
        self.leases = {p: (who, until) for p, (who, until) in self.leases.items()
                       if until > now and who != labeller}
        held = {}
        for pid in self.leases:
            held[pid] = held.get(pid, 0) + 1
        open_ = [c for c in self.store.candidates if c.id not in mine.get(labeller, set())
                 and judged.get(c.id, 0) + held.get(c.id, 0) < self.per_prompt]
        # Prompts nobody else holds first, so labellers at once see different ones; the
        # labeller's skipped prompts come back last.
        pick = min(open_, default=None, key=lambda c: (
            c.id in skipped.get(labeller, set()), held.get(c.id, 0) > 0))
        if pick is not None:
            self.leases[pick.id] = (labeller, now + LEASE_S)
        total = len(self.store.candidates) * self.per_prompt
        progress = {"judged": min(total, sum(min(n, self.per_prompt) for n in judged.values())),
                    "total": total, "mine": len(mine.get(labeller, set()))}
        prompt = None if pick is None else {"id": pick.id, "prompt": pick.prompt,
                                            "responses": pick.responses}
        return {"prompt": prompt, "progress": progress}

    def judge(self, labeller: str, body: dict) -> None:
        """Validate one judgement from the page and append it."""
        pid, kind = body.get("id"), body.get("kind")
        cand = self.store.by_id.get(pid) if isinstance(pid, str) else None
        if cand is None:
            raise LabelError(f"unknown prompt id {pid!r}")
        if kind not in ("rank", "tie", "skip"):
            raise LabelError(f"kind={kind!r}: expected rank, tie or skip")
        record = {"judge": f"human:{labeller}", "id": pid, "kind": kind}
        if kind == "rank":
            ranking = body.get("ranking")
            k = len(cand.responses)
            if not isinstance(ranking, list) or not ranking or len(set(ranking)) != len(
                    ranking) or not all(type(i) is int and 0 <= i < k for i in ranking):
                raise LabelError(f"ranking={ranking!r}: expected distinct answer indices in "
                                 f"0..{k - 1}, best first")
            record.update(ranking=ranking, confidence=1.0)
        _, mine, _ = self._counts()  # the server runs one call at a time
        if kind != "skip" and pid in mine.get(labeller, set()):
            raise LabelError(f"{labeller} has already judged prompt {pid!r}")
        self.store.append([record])
        self.leases.pop(pid, None)

    def undo(self, labeller: str) -> dict | None:
        """Append an undo of the labeller's last active judgement; returns what it undid."""
        mine = [r for r in self.store.active() if r["judge"] == f"human:{labeller}"]
        if not mine:
            return None
        last = mine[-1]
        self.store.append([{"judge": last["judge"], "id": last["id"], "kind": "undo",
                            "undoes": last["seq"]}])
        self.leases[last["id"]] = (labeller, time.time() + LEASE_S)
        return last


def _labeller(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64 or ":" in value:
        raise LabelError("labeller: expected a name of 1-64 characters without ':'")
    return value.strip()


class LabelHandler(http.server.BaseHTTPRequestHandler):
    """The page, its assets and the JSON API; `make_handler` binds an assigner and token."""

    server_version = "llm-label"
    assigner: Assigner
    token: str = ""
    lock: threading.Lock
    # When set, the only Host headers served: without a token, a web page elsewhere could
    # otherwise reach a loopback server through a DNS name rebound to 127.0.0.1.
    allowed_hosts: frozenset[str] = frozenset()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base name
        pass  # one line per request would bury the progress lines

    def _send(self, status: int, body: bytes, ctype: str, cookie: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if cookie:
            self.send_header("Set-Cookie", f"label_token={cookie}; HttpOnly; "
                             "SameSite=Strict; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _authorised(self, query: dict) -> str | None:
        """None when refused; else the cookie value to set ('' for none)."""
        if not self.token:
            return ""
        cookies = dict(part.strip().partition("=")[::2]
                       for part in self.headers.get("Cookie", "").split(";") if part)
        for given in (self.headers.get("X-Label-Token", ""), cookies.get("label_token", "")):
            if given and hmac.compare_digest(given.encode(), self.token.encode()):
                return ""
        given = query.get("token", [""])[0]
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return self.token
        return None

    def _route(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if self.allowed_hosts and self.headers.get("Host", "") not in self.allowed_hosts:
            return self._json(403, {"error": "unexpected Host header"})
        cookie = self._authorised(query)
        if cookie is None:
            return self._json(401, {"error": "missing or wrong access token"})
        try:
            if method == "GET" and url.path in STATIC:
                name, ctype = STATIC[url.path]
                page = importlib.resources.files("llm.label.static")
                return self._send(200, page.joinpath(name).read_bytes(), ctype, cookie)
            if self._api(method, url.path, query):
                return None
        except LabelError as error:
            return self._json(400, {"error": str(error)})
        return self._json(404, {"error": f"no such page: {method} {url.path}"})

    def _api(self, method: str, path: str, query: dict) -> bool:
        """Answer /api/next, /api/judge or /api/undo; False for any other request."""
        if method == "GET" and path == "/api/next":
            with self.lock:
                self._json(200, self.assigner.next(_labeller(query.get("labeller", [""])[0])))
            return True
        if method == "POST" and path in ("/api/judge", "/api/undo"):
            body = self._body()
            name = _labeller(body.get("labeller"))
            with self.lock:
                if path == "/api/judge":
                    self.assigner.judge(name, body)
                else:
                    self.assigner.undo(name)
                self._json(200, self.assigner.next(name))
            return True
        return False

    def _body(self) -> dict:
        # JSON only: another site's plain form post cannot send this type (CSRF).
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
            raise LabelError("expected Content-Type: application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise LabelError("request too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LabelError("expected a JSON object") from None
        if not isinstance(body, dict):
            raise LabelError("expected a JSON object")
        return body

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        """Serve the page, its assets and /api/next."""
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        """Record a judgement or an undo."""
        self._route("POST")


def make_handler(assigner: Assigner, token: str) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler class bound to one assigner and access token."""
    return type("Handler", (LabelHandler,), {"assigner": assigner, "token": token,
                                              "lock": threading.Lock()})


def make_server(store: Store, *, host: str = "127.0.0.1", port: int = 0, token: str = "",
                per_prompt: int = 1) -> http.server.ThreadingHTTPServer:
    """A server for the store's candidates, bound and ready (`serve_forever` runs it)."""
    check_bind(host, token)
    if not 0 <= port <= 65535:
        raise LabelError(f"label.port={port}: expected 0..65535 (0 picks a free port)")
    assigner = Assigner(store, per_prompt)
    store.rebuild()
    handler = make_handler(assigner, token)
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise LabelError(f"label.host={host!r}, label.port={port}: cannot listen there "
                         f"({error.strerror})") from None
    if not token:  # loopback only: accept the names of this address alone
        bound = server.server_address[1]
        names = (f"[{host}]" if ":" in host else host, "localhost", "127.0.0.1")
        handler.allowed_hosts = frozenset(f"{name}:{bound}" for name in names)
    server.daemon_threads = True
    return server
