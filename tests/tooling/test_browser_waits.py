"""harness.stack.wait_for_text: a page whose loads Chromium aborted is reloaded; any other page is not."""

from typing import Any

import pytest

from harness.stack import wait_for_text

CHANGED = "http://127.0.0.1:1/static/js/4028.chunk.js - Failed to load resource: net::ERR_NETWORK_CHANGED"


class Page:
    """A browser showing `pages` in turn, one per load; the first carries `console` in its log."""

    def __init__(self, *pages: str, console: str | None = None) -> None:
        self.pages, self.shown, self.current_url = list(pages), 0, "http://127.0.0.1:1/#/models/tagifai"
        self.log = [{"level": "SEVERE", "message": console}] if console else []

    def find_element(self, by: str, value: str) -> Any:
        return type("Body", (), {"text": self.pages[self.shown]})()

    def get_log(self, kind: str) -> list[dict[str, str]]:
        entries, self.log = self.log, []
        return entries

    def refresh(self) -> None:
        self.shown = min(self.shown + 1, len(self.pages) - 1)


def test_a_single_page_app_whose_chunk_failed_to_load_is_reloaded_until_it_shows_the_text():
    browser = Page("Something went wrong", "tagifai champion", console=CHANGED)
    assert wait_for_text(browser, "tagifai", "champion", timeout=10) == "tagifai champion"
    assert browser.shown == 1


def test_an_error_page_without_a_network_change_is_not_reloaded_and_the_failure_shows_the_console():
    browser = Page("Something went wrong", "tagifai champion", console="Uncaught TypeError: reading 'tz'")
    with pytest.raises(AssertionError, match=r"(?s)never showed.*Something went wrong.*reading 'tz'"):
        wait_for_text(browser, "tagifai", "champion", timeout=2)
    assert browser.shown == 0
