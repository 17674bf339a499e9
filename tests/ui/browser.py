"""The Prefect UI as an operator uses it, driven in headless Chromium (Debian's package) by Playwright.

Selectors come from the UI's own DOM (Prefect 3.9, the default Vue UI): forms are schema forms whose
fields are `.schema-form-property` blocks labelled by `.schema-form-property__label`; tabs are
`li.p-tab`; the Resume dialog is `.p-modal__card`; select fields open from their chevron icon
(a click on the field's button only focuses it). Labels are matched as the user reads them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deployctl.stack import PROJECT_DIR

CHROMIUM = Path("/usr/bin/chromium")
# What Chromium needs to start headless in a container, and to stay off the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = PROJECT_DIR / "test-artifacts" / "ui"  # tests/conftest.py says where, at the end of the run
VIEWPORT = {"width": 1400, "height": 1000}


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make install)"
    return None


@contextmanager
def chromium(home: Path) -> Iterator[object]:
    """Headless Chromium with its own HOME and TMPDIR: it writes its profile and caches there."""
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home)}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                             env=env)
        try:
            yield browser
        finally:
            browser.close()


def fresh_screenshot_dir() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


class PrefectUI:
    """One operator's tab on the Prefect UI at `base_url`, saving numbered screenshots of each stage and,
    in `stages.txt`, when each was reached."""

    def __init__(self, page, base_url: str, shots: Path) -> None:  # type: ignore[no-untyped-def]
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.shots = shots
        self.taken: list[Path] = []
        self.started = time.monotonic()
        # Each wait for what a page shows. On a slow, loaded 2-core machine the UI took over 20 s to
        # render some of it; a page that never shows it still fails, a minute later.
        page.set_default_timeout(60_000)

    # navigation

    def open(self, path: str) -> None:
        """Go to `path` and wait for its heading. The UI polls the API all the time, so waiting for the
        network to go quiet costs seconds a page: each step waits for what it reads instead."""
        self.page.goto(self.base_url + path, wait_until="domcontentloaded")
        self.page.locator(".page-heading").first.wait_for()

    def step_away(self) -> None:
        """Leave the UI while a run goes on, as a person switches to another tab: the UI polls the API and
        animates a running run's page all the time, about a core of headless Chromium's CPU that the run
        itself would otherwise wait on. The next `open` comes back."""
        self.page.goto("about:blank")

    def open_run(self, run_id: str) -> None:
        """A run page, once its state badge is drawn (the run has loaded)."""
        self.open(f"/runs/flow-run/{run_id}")
        self.page.locator(".page-heading .state-badge").first.wait_for()

    def tab(self, name: str) -> None:
        self.page.locator("li.p-tab", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).click()

    def title(self) -> str:
        """The last crumb of the page heading: the run's name on a run page."""
        return str(self.page.locator(".page-heading .p-bread-crumbs__crumb").last.inner_text()).strip()

    def state(self) -> str:
        """The state badge of the run page's heading."""
        return str(self.page.locator(".page-heading .state-badge").first.inner_text()).strip()

    # the deployment's Run menu

    def open_custom_run(self, deployment_id: str):  # type: ignore[no-untyped-def]
        """The deployment page's Run → Custom run form."""
        self.open(f"/deployments/deployment/{deployment_id}")
        self.page.get_by_role("button", name="Run", exact=True).click()
        self.page.get_by_role("button", name="Custom run").click()
        form = self.page.locator("form.flow-run-create-form-v2")
        self.field(form, "environment").locator("textarea").wait_for()
        return form

    def submit_run(self, form) -> str:  # type: ignore[no-untyped-def]
        """Submit the custom run form and follow the toast's View run; the new run's id."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        form.get_by_role("button", name="Submit").click()
        # The UI mounts two toast containers; the one drawn on top is the last.
        toast = self.page.locator(".toast-flow-run-create").last
        run_page = re.compile(r"/runs/flow-run/[0-9a-f-]{36}")
        toast.get_by_role("button", name="View run").click()
        try:
            self.page.wait_for_url(run_page)
        except PlaywrightTimeout:
            # On a loaded machine the click can land while the toast still slides in, and nothing
            # happens: a person would click again, and so does this, once.
            toast.get_by_role("button", name="View run").click()
            self.page.wait_for_url(run_page)
        return self.page.url.rsplit("/", 1)[-1].split("?")[0]

    # schema forms (the custom run form, the Resume form)

    def field(self, scope, label: str):  # type: ignore[no-untyped-def]
        return scope.locator(".schema-form-property").filter(
            has=self.page.locator(".schema-form-property__label", has_text=re.compile(rf"^{re.escape(label)}\b")))

    def text_field(self, scope, label: str):  # type: ignore[no-untyped-def]
        return self.field(scope, label).locator("textarea")

    def text_holding(self, element, wanted: tuple[str, ...], timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
        """`element`'s text once it holds every one of `wanted`, or as it is after `timeout` seconds (the
        caller asserts on it): the Resume dialog renders its Markdown brief after its first fields."""
        deadline = time.monotonic() + timeout
        while True:
            text = str(element.inner_text())
            if all(part in text for part in wanted) or time.monotonic() > deadline:
                return text
            self.page.wait_for_timeout(250)

    def description(self, scope, label: str) -> str:  # type: ignore[no-untyped-def]
        return str(self.field(scope, label).locator(".schema-form-property__description").inner_text()).strip()

    def choose(self, scope, label: str, option: str) -> None:  # type: ignore[no-untyped-def]
        self.field(scope, label).locator(".p-select-button__icon").click()
        self.page.get_by_role("option", name=option, exact=True).click()

    # the paused run's Resume form

    def open_resume_form(self):  # type: ignore[no-untyped-def]
        self.page.get_by_role("button", name="Resume").click()
        card = self.page.locator(".p-modal__card")
        card.locator(".schema-form-property").first.wait_for()
        return card

    def answer(self, card, approver: str, role: str, decision: str, comment: str) -> None:  # type: ignore[no-untyped-def]
        self.text_field(card, "Approver").fill(approver)
        self.choose(card, "Role", role)
        self.choose(card, "Decision", decision)
        self.text_field(card, "Comment").fill(comment)

    def submit_resume(self, card) -> None:  # type: ignore[no-untyped-def]
        """Submit the Resume form; the dialog closes once the server took the answer."""
        card.get_by_role("button", name="Submit").click()
        card.wait_for(state="hidden")

    # artifacts

    def open_artifact(self, key: str) -> str:
        """From the run page's Artifacts tab, open the latest artifact `key`; returns its text."""
        self.tab("Artifacts")
        self.page.locator(".artifact-card__title", has_text=re.compile(rf"^\s*{re.escape(key)}\s*$")).click()
        self.page.locator(".page-heading-artifact", has_text=key).wait_for()
        data = self.page.locator(".artifact-data-view")
        data.get_by_text(re.compile(r"\S")).first.wait_for()
        return str(data.inner_text())

    # screenshots

    def shoot(self, name: str, element=None, whole: bool = True) -> Path:  # type: ignore[no-untyped-def]
        """`NN-name.png` of the page (or of `element`). The UI scrolls inside its own panes (the page's
        content, the Resume dialog's text), so for a whole shot the window grows until nothing scrolls."""
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        height = VIEWPORT["height"]
        for _ in range(4 if whole else 0):
            hidden = int(self.page.evaluate(HIDDEN_BY_SCROLLING))
            if hidden <= 1:
                break
            height = min(height + hidden, 8000)
            self.page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
            self.page.wait_for_timeout(150)
        try:
            (element or self.page).screenshot(path=str(path))
        finally:
            self.page.set_viewport_size(VIEWPORT)
        self.taken.append(path)
        with (self.shots / "stages.txt").open("a") as stages:
            stages.write(f"{time.monotonic() - self.started:6.1f} s  {path.name}\n")
        return path


# The most any scrolling pane of the page hides below its fold, in pixels.
HIDDEN_BY_SCROLLING = """() => Math.max(0, ...[...document.querySelectorAll('*')]
    .filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowY))
    .map(e => e.scrollHeight - e.clientHeight))"""
