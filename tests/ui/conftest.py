"""A real JupyterLab (subprocess) with the sidebar from this tree, and headless Chromium.

The lab runs on a free loopback port with a token, in temporary root, Jupyter and
clusterjupyter directories. The sidebar is served from this tree's build output
(``clusterjupyter/labextension``, built by ``jlpm build`` in ``labextension/``) and the server
extension is enabled on the command line, so the test needs no installed copy of either.

The browser is the system's Chromium (``/usr/bin/chromium``, Debian package ``chromium``),
driven by Playwright for Python; Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from clusterjupyter import paths

REPO = Path(__file__).resolve().parents[2]
BUILT = REPO / "clusterjupyter" / "labextension"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("CLUSTERJUPYTER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LAB_START_TIMEOUT = 90


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium")


class Lab:
    """A running ``jupyter lab``: its URL, token, root directory and clusterjupyter home."""

    def __init__(self, url: str, token: str, root: Path, home: Path, log: Path):
        self.url = url
        self.token = token
        self.root = root
        self.home = home
        self.log = log

    def page_url(self, path: str = "lab") -> str:
        return f"{self.url}{path}?token={self.token}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + LAB_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"jupyter lab did not answer in {LAB_START_TIMEOUT}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not (BUILT / "package.json").exists():
        pytest.fail(f"the sidebar is not built ({BUILT} is missing): "
                    "run `jlpm install && jlpm build` in labextension/")
    base = tmp_path_factory.mktemp("lab")
    root, home, jupyter = base / "root", base / "cj-home", base / "jupyter"
    for d in (root, home, jupyter / "config", jupyter / "data", jupyter / "runtime"):
        d.mkdir(parents=True)
    # the sidebar of this tree, under its package name, first on the labextensions path
    extensions = base / "labextensions"
    extensions.mkdir()
    name = json.loads((BUILT / "package.json").read_text())["name"]
    (extensions / name).symlink_to(BUILT, target_is_directory=True)
    # quiet lab: no news or update checks
    settings = jupyter / "settings"
    notification = (settings / "@jupyterlab" / "apputils-extension"
                    / "notification.jupyterlab-settings")
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    token = os.urandom(16).hex()
    port = _free_port()
    env = dict(os.environ)
    env.update({
        paths.HOME_ENV: str(home),
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_DATA_DIR": str(jupyter / "data"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    })
    argv = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.jpserver_extensions={'clusterjupyter.server': True}",
        f"--LabApp.extra_labextensions_path={extensions}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={jupyter / 'workspaces'}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = base / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    mp = pytest.MonkeyPatch()
    mp.setenv(paths.HOME_ENV, str(home))  # this process reads the same journal as the lab
    try:
        _wait_ready(url, token, proc, log)
        yield Lab(url, token, root, home, log)
    finally:
        mp.undo()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium "
                    "(or set CLUSTERJUPYTER_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# pytest-jupyter's autouse fixtures (active when its plugin is loaded for tests/test_server.py)
# would pick up and close the event loop Playwright's sync API runs on: off in this directory.
@pytest.fixture
def jp_asyncio_loop():
    yield None


@pytest.fixture
def jp_server_cleanup():
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()

#: JupyterLab's own rejection when a kernel connection is disposed (a notebook closed, renamed
#: or its kernel restarted by the test) while its request for a widget subshell (JupyterLab
#: >= 4.4 asks for one when the first widget appears) is still open; it is not raised by our
#: code and says nothing about it. Every other uncaught error fails the test.
_LAB_TEARDOWN = ("Canceled future for create_subshell_request message before replies were done",)


@pytest.fixture
def page(request: pytest.FixtureRequest, browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
        errors = [e for e in errors if not any(t in e for t in _LAB_TEARDOWN)]
        assert not errors, f"uncaught errors in the page: {errors}"
        if request.node.stash.get(_CALL_FAILED, False):
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / f"failed-{request.node.name}.png"
            pg.screenshot(path=str(shot))
            print(f"screenshot of the failure: {shot}\nlab log: {lab.log}")
    finally:
        context.close()
