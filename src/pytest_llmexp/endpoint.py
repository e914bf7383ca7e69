"""Which OpenAI-compatible endpoint bots call, for scripts and notebooks.

Under pytest the plugin sets the endpoint from ``--llm-base-url``, ``--llm-model`` and the
rest; a script that wants another endpoint than ``OPENAI_BASE_URL`` (or OpenAI's own) says
so here, for instance the embedded model::

    from pytest_llmexp import LocalServer, endpoint

    with LocalServer() as server:
        endpoint.configure(server.client_settings())
        ...  # bots and Experiment runs now call the local model
"""

from __future__ import annotations

from ._run.endpoint import configure, settings
from ._run.process import ClientSettings

__all__ = ["ClientSettings", "configure", "settings"]
