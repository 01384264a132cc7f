"""The web app's parts: one `tab_*` module per workflow step (widgets and wiring only), one
`*_service` module per step (the handlers' logic as plain functions over a `Studio`), and what
they share (`studio`, `jobs`, `datasets`, `thumbnails`, `events`, `header`).

This package is the only one that knows Gradio, the store and the library together; `app.py`
composes it.
"""
