"""An agent fails over between controllers (several on one database): the node client
rotates past a dead or stopping controller and sticks to the one that answers, the retry
budget counts passes over all of them, a heartbeat answer replaces the list, and the boot
script downloads the agent from the first controller that serves it. Real servers on
127.0.0.1 throughout; a "dead" controller is a bound port with nothing listening."""

from __future__ import annotations

import hashlib
import http.client
import io
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from skyjobs.node.agent import Agent
from skyjobs.node.client import (
    URLS_VAR,
    ControllerClient,
    controller_url,
    controller_urls,
    parse_controller_urls,
)
from skyjobs.providers import bootstrap
from tests.conftest import ROOT

TOKEN = "agent-token"
ATTEMPT = "7"


class Controller:
    """A controller's agent API as far as the client sees it: every request is recorded
    and answered with ``status`` and ``body``, over HTTP/1.1 keep-alive like aiohttp's."""

    def __init__(self, status: int = 200, body: bytes = b'{"ok": true}') -> None:
        self.status, self.body = status, body
        self.hits: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.answer(self)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, req: BaseHTTPRequestHandler) -> None:
        req.rfile.read(int(req.headers.get("Content-Length") or 0))
        self.hits.append((req.command, req.path, req.headers.get("Authorization")))
        status, body = self.status, self.body
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            status, body = 401, b"no"
        req.send_response(status)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Closer:
    """A controller that accepts connections and closes them at once, counting them: a
    connection attempt that can be counted, unlike a refused one."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.accepted = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1  # before the close: the client's error comes after it
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Controller]]:
    made: list[Controller] = []

    def make(status: int = 200, body: bytes = b'{"ok": true}') -> Controller:
        made.append(Controller(status, body))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def closers() -> Iterator[Callable[[], Closer]]:
    made: list[Closer] = []

    def make() -> Closer:
        made.append(Closer())
        return made[-1]

    yield make
    for closer in made:
        closer.close()


@pytest.fixture
def dead() -> Iterator[str]:
    """A port bound for the test, with nothing listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def client() -> Iterator[Callable[..., ControllerClient]]:
    """Clients on a list of URLs, their connections closed after the test."""
    made: list[ControllerClient] = []

    def make(*urls: str) -> ControllerClient:
        made.append(ControllerClient(urls[0] if len(urls) == 1 else list(urls), ATTEMPT,
                                     TOKEN, 0))
        return made[-1]

    yield make
    for c in made:
        c.close()


# --- the client --------------------------------------------------------------------------


def test_a_dead_controller_is_skipped_and_the_live_one_kept(
        servers: Callable[..., Controller], client: Callable[..., ControllerClient],
        dead: str) -> None:
    first, second = servers(), servers()
    c = client(dead, first.url, second.url)
    for _ in range(3):
        assert c.call("POST", "/heartbeat", {"rank": 0}) == {"ok": True}
    assert c.current == first.url
    assert first.hits == [("POST", f"/agent/v1/attempts/{ATTEMPT}/heartbeat",
                           f"Bearer {TOKEN}")] * 3
    assert second.hits == []  # the first that answered is kept, not the next in the list


def test_a_single_url_string_still_works(servers: Callable[..., Controller],
                                         client: Callable[..., ControllerClient]) -> None:
    live = servers()
    c = client(live.url + "/")  # a string, as before
    assert c.controllers == [live.url]
    assert c.call("GET", "/task?rank=0") == {"ok": True}
    assert live.hits[0][1] == f"/agent/v1/attempts/{ATTEMPT}/task?rank=0"


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_stopping_controller_rotates(servers: Callable[..., Controller],
                                      client: Callable[..., ControllerClient],
                                      status: int) -> None:
    stopping, live = servers(status), servers()
    c = client(stopping.url, live.url)
    assert c.call("GET", "/task") == {"ok": True}
    assert c.current == live.url
    stopping.status = 200  # back, but the client stays where it got an answer
    c.call("GET", "/task")
    assert (len(stopping.hits), len(live.hits)) == (1, 2)


def test_the_current_controller_going_away_moves_the_client_on(
        servers: Callable[..., Controller], client: Callable[..., ControllerClient]) -> None:
    a, b = servers(), servers()
    c = client(a.url, b.url)
    c.call("GET", "/task")  # a kept-alive connection to a
    a.status = 503
    assert c.call("GET", "/task") == {"ok": True} and c.current == b.url
    a.close()  # and gone for good: the client never goes back by itself
    assert c.call("GET", "/task") == {"ok": True} and c.current == b.url
    assert (len(a.hits), len(b.hits)) == (2, 2)


@pytest.mark.parametrize("status", [400, 404, 409, 500])
def test_other_answers_are_the_callers_without_rotation(
        servers: Callable[..., Controller], client: Callable[..., ControllerClient],
        status: int) -> None:
    answering, other = servers(status, b'{"error": "no"}'), servers()
    c = client(answering.url, other.url)
    with pytest.raises(urllib.error.HTTPError) as err:
        c.call("GET", "/task")
    assert err.value.code == status and err.value.read() == b'{"error": "no"}'
    assert c.current == answering.url and other.hits == []
    # retrying keeps its meaning: a 4xx is final at once, a 500 is retried, on that controller.
    with pytest.raises(urllib.error.HTTPError if status < 500 else TimeoutError):
        c.retrying(lambda: c.call("GET", "/task"), 0.1, "fetch task")
    assert (len(answering.hits) == 2) == (status < 500) and other.hits == []


def test_set_controllers_replaces_the_list(servers: Callable[..., Controller],
                                           client: Callable[..., ControllerClient],
                                           dead: str) -> None:
    a, b, new = servers(), servers(), servers()
    c = client(dead)
    c.set_controllers(["", "ftp://x", "not a url", "http://u:p@h", a.url + "/", a.url, b.url])
    assert c.controllers == [a.url, b.url] and c.current == a.url
    assert c.call("GET", "/task") == {"ok": True}
    for useless in ([], [""], ["gopher://x", "http://h?q"]):
        c.set_controllers(useless)
        assert c.controllers == [a.url, b.url]
    c.set_controllers([b.url])
    assert c.controllers == [b.url] and c.current == b.url  # a left the list: b
    c.set_controllers([new.url, b.url])  # a new owner first; b, current, is still listed
    assert c.current == b.url
    c.call("GET", "/task")
    assert (len(a.hits), len(b.hits), len(new.hits)) == (1, 1, 0)


def test_all_controllers_down_is_one_attempt_per_pass(
        closers: Callable[[], Closer], client: Callable[..., ControllerClient],
        dead: str) -> None:
    x, y, alone = closers(), closers(), closers()
    c = client(x.url, dead, y.url)
    with pytest.raises((OSError, http.client.HTTPException)):
        c.request("GET", "/task")
    assert (x.accepted, y.accepted) == (1, 1)  # one pass: each controller tried once

    def passes(cl: ControllerClient, budget: float) -> float:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="fetch task: gave up"):
            cl.retrying(lambda: cl.call("GET", "/task"), budget, "fetch task")
        return time.monotonic() - start

    x.accepted = y.accepted = 0
    took = passes(c, 0.5)
    single = passes(client(alone.url), 0.5)
    # Backoff 0.2 s then 0.4 s: passes at 0, 0.2 and 0.6 s, whatever the number of URLs.
    assert x.accepted == y.accepted == alone.accepted
    assert 2 <= x.accepted <= 4
    assert 0.5 <= took < 1.5 and 0.5 <= single < 1.5


# --- the agent ---------------------------------------------------------------------------


def agent_env(**extra: str) -> dict[str, str]:
    return {"SKYJOBS_ATTEMPT_ID": ATTEMPT, "SKYJOBS_AGENT_TOKEN": TOKEN, **extra}


def test_the_agent_reads_its_controllers_and_takes_the_heartbeats_list() -> None:
    agent = Agent(agent_env(SKYJOBS_CONTROLLER_URLS=" http://a:1/, https://b ,",
                            SKYJOBS_CONTROLLER_URL="http://old:1"))
    assert agent.client.controllers == ["http://a:1", "https://b"]
    for ignored in ({}, {"controllers": "http://c"}, {"controllers": ["http://c", 3]}):
        agent._take_controllers(ignored)
        assert agent.client.controllers == ["http://a:1", "https://b"]
    agent._take_controllers({"controllers": ["http://c:2", "https://b"]})
    assert agent.client.controllers == ["http://c:2", "https://b"]
    alone = Agent(agent_env(SKYJOBS_CONTROLLER_URL="http://old:1", SKYJOBS_CONTROLLER_URLS=" "))
    assert alone.client.controllers == ["http://old:1"]


def test_an_answer_that_sends_the_agent_elsewhere_says_so() -> None:
    """A controller that does not run the job answers with a redirect to the owner: the
    agent moves there (and its heartbeat loop beats again at once)."""
    agent = Agent(agent_env(SKYJOBS_CONTROLLER_URLS="http://a:1,http://b:2"))
    assert agent.client.current == "http://a:1"
    assert agent._take_controllers({"controllers": ["http://a:1", "http://b:2"]}) is False
    # A redirect names the owner first and keeps the answering controller in the list, so
    # an owner that has just died leaves a way back.
    assert agent._take_controllers({"controllers": ["http://b:2", "http://a:1"],
                                    "redirect": True}) is True
    assert agent.client.current == "http://b:2"
    assert agent.client.controllers == ["http://b:2", "http://a:1"]


def test_the_agent_stops_with_one_clear_line_on_bad_urls(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           **agent_env(SKYJOBS_CONTROLLER_URLS="http://a:1,file:///etc/passwd")}
    out = subprocess.run([sys.executable, "-c", "from skyjobs.node.agent import main; main()"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == 2, out.stderr
    assert "bad environment: SKYJOBS_CONTROLLER_URLS: 'file:///etc/passwd'" in out.stdout
    assert "Traceback" not in out.stderr


URL_PIECES = hs.sampled_from(["http://", "https://", "HTTP://", "ftp://", "", "h", "a.b",
                              "[::1]", "[zz]", "127.0.0.1", ":", ":80", ":99999", ":x", "/",
                              "/p", "?", "#", "@", " ", ",", "\t", "\n", "\x00", "é", "%20"])
URLISH = hs.lists(URL_PIECES, max_size=12).map("".join)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@PROPS
@given(hs.one_of(hs.text(max_size=60), URLISH,
                 hs.lists(URLISH, max_size=4).map(",".join)))
def test_parsing_controller_urls_gives_clean_urls_or_one_clear_error(text: str) -> None:
    try:
        urls = parse_controller_urls(text)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)  # one line, the bad entry quoted
        return
    assert urls and len(set(urls)) == len(urls)
    for url in urls:
        assert url.startswith(("http://", "https://")) and not url.endswith("/")
        assert controller_url(url) == url  # clean: parsing it again changes nothing
        assert url.isascii() and url.isprintable() and not any(c in url for c in " ,?#@")
        host_port = url.split("://", 1)[1].split("/", 1)[0]
        conn = http.client.HTTPConnection(host_port)  # what the client will connect to
        assert conn.host and 0 < conn.port < 65536


@PROPS
@given(hs.one_of(hs.text(max_size=40), URLISH))
def test_the_agents_environment_names_the_bad_variable(text: str) -> None:
    try:
        urls = controller_urls({URLS_VAR: text, "SKYJOBS_CONTROLLER_URL": "http://fallback"})
    except ValueError as err:
        assert str(err).startswith(f"{URLS_VAR}: ")
        return
    assert urls == (parse_controller_urls(text) if text.strip() else ["http://fallback"])


def test_no_controller_variable_is_the_missing_one() -> None:
    with pytest.raises(KeyError, match="SKYJOBS_CONTROLLER_URL"):
        controller_urls({URLS_VAR: "  "})
    with pytest.raises(ValueError, match="^SKYJOBS_CONTROLLER_URL: "):
        controller_urls({"SKYJOBS_CONTROLLER_URL": "ftp://x"})


# --- the boot script ---------------------------------------------------------------------


def zipapp() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("__main__.py", "print('hello from the zipapp')\n")
    return buf.getvalue()


def fetch(tmp_path: Path, seconds: int = 5,
          **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The boot script's download step, as the script runs it: ``python3 -I - DEST SECONDS``
    with the agent env exported."""
    dest = tmp_path / "agent.pyz"
    full = {"PATH": "/usr/bin:/bin", "SKYJOBS_ATTEMPT_ID": ATTEMPT,
            "SKYJOBS_AGENT_TOKEN": TOKEN, **env}
    out = subprocess.run([sys.executable, "-I", "-", str(dest), str(seconds)],
                         input=bootstrap._FETCH, env=full, capture_output=True, text=True,
                         timeout=30, check=False)
    assert TOKEN not in out.stdout + out.stderr
    return out, dest


@pytest.mark.parametrize("first", ["dead", 503])
def test_boot_fetch_moves_on_to_the_next_controller(
        first: str | int, servers: Callable[..., Controller], dead: str,
        tmp_path: Path) -> None:
    data = zipapp()
    live = servers(200, data)
    down = dead if first == "dead" else servers(503).url
    out, dest = fetch(tmp_path, SKYJOBS_CONTROLLER_URLS=f"{down}/,{live.url}",
                      SKYJOBS_CONTROLLER_URL="http://127.0.0.1:9",
                      SKYJOBS_AGENT_SHA256=hashlib.sha256(data).hexdigest())
    assert out.returncode == 0, out.stderr
    assert "trying the next controller" in out.stderr and "retrying in" not in out.stderr
    assert dest.read_bytes() == data and stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert [h[1] for h in live.hits] == [f"/agent/v1/attempts/{ATTEMPT}/agent.pyz"]
    ran = subprocess.run([sys.executable, "-I", str(dest)], capture_output=True, text=True,
                         timeout=30, check=True)
    assert ran.stdout == "hello from the zipapp\n"


def test_boot_fetch_still_stops_at_a_404_and_checks_the_hash(
        servers: Callable[..., Controller], tmp_path: Path) -> None:
    gone, live = servers(404), servers(200, zipapp())
    out, dest = fetch(tmp_path, SKYJOBS_CONTROLLER_URLS=f"{gone.url},{live.url}",
                      SKYJOBS_AGENT_SHA256="0" * 64)
    assert out.returncode != 0 and "HTTP 404: giving up" in out.stderr
    assert live.hits == [] and not dest.exists()
    out, dest = fetch(tmp_path, SKYJOBS_CONTROLLER_URLS=live.url, SKYJOBS_AGENT_SHA256="0" * 64)
    assert out.returncode != 0 and "not running it" in out.stderr and not dest.exists()


def test_boot_fetch_falls_back_to_the_single_url_and_refuses_other_schemes(
        servers: Callable[..., Controller], tmp_path: Path) -> None:
    data = zipapp()
    live = servers(200, data)
    sha = hashlib.sha256(data).hexdigest()
    out, dest = fetch(tmp_path, SKYJOBS_CONTROLLER_URLS=" ", SKYJOBS_CONTROLLER_URL=live.url,
                      SKYJOBS_AGENT_SHA256=sha)
    assert out.returncode == 0, out.stderr
    assert dest.read_bytes() == data
    out, _ = fetch(tmp_path, SKYJOBS_CONTROLLER_URLS=f"{live.url},file:///etc/passwd",
                   SKYJOBS_AGENT_SHA256=sha)
    assert out.returncode != 0 and "not http(s) URLs" in out.stderr
    assert "Traceback" not in out.stderr and len(live.hits) == 1


def test_boot_fetch_with_every_controller_down_backs_off_then_gives_up(
        closers: Callable[[], Closer], dead: str, tmp_path: Path) -> None:
    closer = closers()
    start = time.monotonic()
    out, _ = fetch(tmp_path, 2, SKYJOBS_CONTROLLER_URLS=f"{dead},{closer.url}",
                   SKYJOBS_AGENT_SHA256="ab" * 32)
    # Budget 2 s, backoff 1 s then 2 s: passes at 0 and 1 s; the next (at 3 s) is past it.
    assert out.returncode != 0 and "gave up after 2s" in out.stderr
    assert closer.accepted == 2 and out.stderr.count("retrying in 1s") == 1
    assert out.stderr.count("trying the next controller") == 2
    assert time.monotonic() - start < 4
