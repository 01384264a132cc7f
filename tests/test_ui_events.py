"""How tab handlers refuse: a setting RunConfig refuses is refused before the job, above its
field (`settings_validator`); another refusal asked for from the page goes under the button and
leaves every other output alone (`shows_errors(status=...)`); API clients get the error. The
browser test (tests/test_browser.py) checks the same on the page."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio.context import LocalContext

from ui.events import markdown_text, settings_validator, shows_errors


def test_a_refused_setting_is_named_on_its_own_field():
    validate = settings_validator(lambda project_id: {"debias_epochs": 12})
    results = validate(1, debias_epochs=0, train_vanilla=True, baselines=["lff"])
    assert [r["is_valid"] for r in results] == [True, False, True, True]
    assert results[1]["message"].startswith("debias_epochs must be an integer from 1")
    assert all(r["is_valid"] for r in validate(1, debias_epochs=3, train_vanilla=False,
                                               baselines=[]))
    # a blank box keeps the project's setting: not refused
    assert all(r["is_valid"] for r in validate(1, debias_epochs="", train_vanilla=True,
                                               baselines=[]))
    # no project open yet: checked against the defaults, the handler says what to do
    assert [r["is_valid"] for r in validate(None, debias_epochs=-1)] == [True, False]


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
