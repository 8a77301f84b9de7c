"""Issue 16: ``meshtui serve`` puts the TUI in a browser (textual-serve), checked with a real
headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright: no browser download).

The terminal is drawn on a canvas by xterm.js, so the test reads what it shows from
xterm's own screen buffer: the served ``textual.js`` is passed through unchanged but
for one assignment that keeps a handle on the page's ``Terminal``.  On failure a
screenshot and the terminal text are kept under ``$MESHTUI_TEST_ARTIFACTS`` (default
``/tmp/meshtui-test-artifacts``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.wait import wait_until

from meshtui.demo import LocalMesh, free_port

CHROMIUM = os.environ.get("MESHTUI_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MESHTUI_TEST_ARTIFACTS", "/tmp/meshtui-test-artifacts"))
TERMINAL_HOOK = re.compile(r"new (\w+)\.Terminal\(\{allowProposedApi")
"""Where textual.js makes the page's terminal: keep a handle on it (window.__meshtuiTerm)."""

if os.environ.get("CI") != "true":  # under CI the extra and chromium are installed: missing fails
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[web]'")
    pytest.importorskip("textual_serve", reason="pip install -e '.[web]'")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, Route, sync_playwright  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    mesh = LocalMesh(3, base_dir=tmp_path_factory.mktemp("serve"))
    mesh.start()
    try:
        assert mesh.wait_ready(20)
        assert mesh.wait_leader(30)
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture
def served(mesh: LocalMesh, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshtui.cli", "serve", "--port", str(port),
         "-t", mesh.nodes[0].socket_path],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def listening() -> bool:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until("meshtui serve listening", listening, 20)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the TUI processes it started
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def screen_text(page: Page) -> str:
    text: str = page.evaluate("""() => {
        const t = window.__meshtuiTerm;
        if (!t) return "";
        const b = t.buffer.active, rows = [];
        for (let i = 0; i < t.rows; i++) {
            const line = b.getLine(b.viewportY + i);
            rows.push(line ? line.translateToString(true) : "");
        }
        return rows.join("\\n");
    }""")
    return text


def hook_terminal(route: Route) -> None:
    body, found = TERMINAL_HOOK.subn(
        r"window.__meshtuiTerm=new \1.Terminal({allowProposedApi", route.fetch().text(), count=1)
    assert found == 1, "textual.js changed: update TERMINAL_HOOK"
    route.fulfill(body=body, content_type="application/javascript")


def test_the_tui_in_a_browser(served: str, request: pytest.FixtureRequest) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.route("**/fonts.googleapis.com/**", lambda route: route.abort())  # offline box
        page.route("**/js/textual.js", hook_terminal)
        try:
            page.goto(served, wait_until="domcontentloaded")
            wait_until("the member names in the terminal", lambda: all(
                name in screen_text(page) for name in ("n1", "n2", "n3")), 40, interval=0.25)
            assert "engine" not in screen_text(page)  # the Mesh screen, not the Consensus one
            page.click("#terminal")
            page.keyboard.press("2")
            wait_until("the Consensus screen", lambda: all(
                word in screen_text(page) for word in ("engine", "raft", "voters")), 20, interval=0.25)
        except BaseException:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            shot = ARTIFACTS / f"serve-browser-{stamp}.png"
            page.screenshot(path=str(shot), full_page=True)
            (ARTIFACTS / f"serve-browser-{stamp}.txt").write_text(screen_text(page))
            sys.stderr.write(f"screenshot kept: {shot}\n")
            raise
        finally:
            browser.close()


def test_serve_warns_loudly_off_loopback(tmp_path: Path) -> None:
    """Bound elsewhere, it says there is no authentication (and starts anyway)."""
    if shutil.which("true") is None:
        pytest.skip("no true(1)")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshtui.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
         "-t", str(tmp_path / "agent.sock")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, text=True,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(3)]
        assert "not on loopback" in lines[0] and "NO AUTHENTICATION" in lines[1], lines
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
