#!/usr/bin/env python
"""Start ``examples/app.py`` on a free localhost port, drive it in headless Chromium and take a screenshot.

    python examples/app_screenshot.py --model_path quickstart/pipeline --class_name Sneaker \
        --output docs/images/app.png

The helpers here (start the app, open Debian's Chromium through selenium, pick a class, wait for a gallery)
also drive the app in ``tests/test_app_browser.py``. They use the installed browser and its driver
(``apt-get install chromium chromium-driver``: ``/usr/bin/chromium``, ``/usr/bin/chromedriver``; other paths
through ``$CHROMIUM`` and ``$CHROMEDRIVER``); nothing is downloaded. Needs ``pip install -e ".[demo,dev]"``.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# No first-run work, no background connections (the network is closed here), throw-away profile.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def missing_browser() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(model_path: str, log_path: str, port: int | None = None, timeout: float = 180.0,
              extra_env: dict | None = None):
    """Run ``app.py`` on ``port`` (a free one by default) until it answers; returns ``(process, url)``.

    The app's output goes to ``log_path``; a start that fails or times out raises with its log.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, APP, "--model_path", model_path, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_app(process)
            with open(log_path) as log:
                raise RuntimeError(f"the app did not start at {url} (exit code {process.returncode}):\n{log.read()}")
        time.sleep(0.5)


def stop_app(process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chromium(width: int = 1280, height: int = 900):
    """A selenium driver of headless Chromium with a new empty profile (removed when the driver quits)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    profile = tempfile.TemporaryDirectory(prefix="rq-hf-chromium-")
    options.add_argument(f"--user-data-dir={profile.name}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    quit_driver = driver.quit

    def quit_and_clean():
        quit_driver()
        profile.cleanup()

    driver.quit = quit_and_clean
    return driver


def wait_for(driver, condition, timeout: float = 60.0, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def open_app(driver, url: str, timeout: float = 60.0) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, lambda d: d.find_elements(By.ID, "generate"), timeout, "the app's page did not load")


def pick_class(driver, name: str) -> None:
    """Choose ``name`` in the class picker (open the dropdown, click the option)."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#class-picker input").click()
    option = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, f'li[role=option][aria-label="{name}"]'),
                      10, f"no class option {name!r}")
    option.click()
    value = driver.find_element(By.CSS_SELECTOR, "#class-picker input").get_attribute("value")
    if value != name:
        raise RuntimeError(f"the class picker shows {value!r} after picking {name!r}")


def set_number(driver, elem_id: str, value) -> None:
    """Type ``value`` into the number field of slider or number ``elem_id`` and commit it (Enter)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.ENTER)
    if field.get_attribute("value") != str(value):
        raise RuntimeError(f"#{elem_id} shows {field.get_attribute('value')!r} after typing {value!r}")


def open_tab(driver, title: str) -> None:
    from selenium.webdriver.common.by import By

    tabs = [tab for tab in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text.strip() == title]
    if not tabs:
        raise RuntimeError(f"no tab {title!r}")
    tabs[0].click()


def gallery_images(driver, elem_id: str, count: int | None = None, timeout: float = 120.0,
                   previous: list | None = None):
    """Wait until gallery ``elem_id`` shows ``count`` (or, if None, some) loaded images, other than ``previous``.

    Returns ``[(src, caption), ...]``; an image counts as shown once the browser has decoded it.
    """
    from selenium.webdriver.common.by import By

    def shown(d):
        images = d.find_elements(By.CSS_SELECTOR, f"#{elem_id} .grid-container img")
        if not images or (count is not None and len(images) != count):
            return False
        loaded = d.execute_script("return arguments[0].every(i => i.complete && i.naturalWidth > 0)", images)
        items = [(image.get_attribute("src"), image.get_attribute("alt")) for image in images]
        if not loaded or (previous is not None and [src for src, _ in items] == [src for src, _ in previous]):
            return False
        return items

    return wait_for(driver, shown, timeout, f"gallery #{elem_id} did not show {count or 'its'} images")


def fetch_image(src: str):
    """The PIL image behind a gallery ``src``."""
    import io

    import PIL.Image

    with urllib.request.urlopen(src, timeout=10) as response:
        return PIL.Image.open(io.BytesIO(response.read())).copy()


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_path", default="quickstart/pipeline")
    parser.add_argument("--class_name", default=None, help="Class to pick (default: the picker's first).")
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--output", default="docs/images/app.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args(argv)
    reason = missing_browser()
    if reason:
        raise SystemExit(reason)
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_app(args.model_path, os.path.join(tmp, "app.log"),
                                 extra_env={"GRADIO_TEMP_DIR": tmp})
        driver = chromium(args.width, args.height)
        try:
            open_app(driver, url)
            if args.class_name:
                pick_class(driver, args.class_name)
            set_number(driver, "num-images", args.num_images)
            driver.find_element(By.ID, "generate").click()
            gallery_images(driver, "samples", args.num_images, timeout=600)
            gallery_images(driver, "sample-depths", timeout=60)
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            driver.save_screenshot(args.output)
        finally:
            driver.quit()
            stop_app(process)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
