"""How tab handlers refuse: a refusal asked for from the page (a setting out of range, a step
not done yet) goes under the button and leaves every other output alone
(`shows_errors(status=...)`); API clients get the error. The browser test
(tests/test_browser.py) checks the same on the page."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio.context import LocalContext

from ui.events import markdown_text, shows_errors


class FakeRequest:
    def __init__(self, headers: dict) -> None:
        self.headers = headers


@pytest.mark.parametrize("headers, refused_in_status", [
    ({"user-agent": "Chromium"}, True),  # the page
    ({"x-gradio-user": "api"}, False),  # gradio_client
    (None, False),  # a direct call
])
def test_a_refusal_goes_under_the_button_only_for_the_page(headers, refused_in_status):
    status = gr.Markdown()

    @shows_errors(status=status)
    def handler():
        raise ValueError("train the biased model (tab 2) first")

    token = LocalContext.request.set(None if headers is None else FakeRequest(headers))
    try:
        if refused_in_status:
            assert handler() == {status: "⚠ train the biased model (tab 2) first"}
        else:
            with pytest.raises(gr.Error, match="train the biased model"):
                handler()
    finally:
        LocalContext.request.reset(token)


def test_messages_show_as_written_in_markdown():
    assert markdown_text("top_k must be <1") == "top\\_k must be &lt;1"
    assert markdown_text("*bold* `code` [link]") == "\\*bold\\* \\`code\\` \\[link\\]"
