"""End to end: the viewer served on localhost, opened in a real headless browser, started both ways the README
gives: the launcher (`python tools/viewer.py ...`) and `streamlit run tools/viewer.py -- ...` from the repository.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and the
selenium package; without them the test is skipped with the reason. Screenshots of both pages go
to the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1800",
)
START_TIMEOUT = 40  # seconds for the server to answer its health check
PAGE_TIMEOUT = 30  # seconds for a page to show what is looked for


def _launcher(data_root: Path, port: int) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "viewer.py"), "--data-root", str(data_root), "--port", str(port)]


def _streamlit_run(data_root: Path, port: int) -> list[str]:
    """The README's second form; the address comes from the repository's .streamlit/config.toml."""
    return [
        sys.executable, "-m", "streamlit", "run", "tools/viewer.py", "--server.port", str(port),
        "--", "--data-root", str(data_root),
    ]  # fmt: skip


def _chromedriver() -> str | None:
    return shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.access(p, os.X_OK)), None
    )


def _other_address() -> str | None:
    """This machine's address on its network (not loopback), or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # a documentation address: nothing is sent, it only picks the route
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the viewer exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the viewer did not answer on 127.0.0.1:{port} within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop the server this test started (its own process group: the launcher execs into streamlit)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


pytestmark = [
    pytest.mark.browser,
    pytest.mark.subprocess,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the browser test runs Debian's chromium (Linux)"),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no browser at {CHROMIUM}: apt-get install -y chromium chromium-driver",
    ),
    pytest.mark.skipif(_chromedriver() is None, reason="no chromedriver: apt-get install -y chromium-driver"),
]


@pytest.mark.parametrize("command", [_launcher, _streamlit_run], ids=["launcher", "streamlit-run"])
def test_viewer_in_headless_chromium(command, sample_root: Path, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip)")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver_path = _chromedriver()
    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("w") as handle:
        server = subprocess.Popen(
            command(sample_root, port),
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    driver = None
    try:
        _wait_healthy(port, server, log)
        assert f"127.0.0.1:{port}" in log.read_text()  # bound to localhost, as both ways promise
        other = _other_address()
        if other is not None:  # and not to every interface: the network address is refused
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(2)
                assert probe.connect_ex((other, port)) != 0, f"the viewer answers on {other}:{port}"

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        wait = WebDriverWait(driver, PAGE_TIMEOUT, poll_frequency=0.25)

        driver.get(f"http://127.0.0.1:{port}/?page=Browse")
        loaded = "return Array.from(document.querySelectorAll('[data-testid=stImage] img')).filter(i => i.complete && i.naturalWidth > 0).length"  # noqa: E501
        wait.until(lambda d: d.execute_script(loaded) >= 2)
        first = json.loads((sample_root / "train_all.json").read_text())["images"][0]["file_name"]

        def captions(d) -> list[str]:
            return [c.text for c in d.find_elements(By.CSS_SELECTOR, "[data-testid=stImageCaption]")]

        # Streamlit sends the grid cell by cell: on a loaded machine the first cell may come after later ones
        try:
            wait.until(lambda d: any(caption.startswith(first) for caption in captions(d)))
        except TimeoutException:
            pytest.fail(f"no thumbnail of {first} on the Browse page: {captions(driver)}")
        driver.save_screenshot(str(tmp_path / "browse.png"))

        data = json.loads((sample_root / "train_all.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        objects = Counter(names[a["category_id"]] for a in data["annotations"])

        def class_rows(d) -> dict[str, list[str]]:
            for table in d.find_elements(By.CSS_SELECTOR, "[data-testid=stTable]"):
                rows = [
                    [c.text for c in r.find_elements(By.CSS_SELECTOR, "th,td")]
                    for r in table.find_elements(By.CSS_SELECTOR, "tr")
                ]  # noqa: E501
                if rows and rows[0][:2] == ["class", "objects"]:
                    return {row[0]: row for row in rows[1:]}
            return {}

        driver.get(f"http://127.0.0.1:{port}/?page=Dataset")
        rows = wait.until(class_rows)
        assert {name: int(rows[name][1]) for name in names.values()} == {n: objects[n] for n in names.values()}
        driver.save_screenshot(str(tmp_path / "dataset.png"))
        for name in ("browse.png", "dataset.png"):
            assert (tmp_path / name).stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        _stop(server)
