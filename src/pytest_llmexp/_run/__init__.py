"""The current run: what the user's experiment code calls while it runs.

Owns the run held in a ``ContextVar`` and what it records (``recording``), the status an
exception that ends a run gives it (``outcome``), ``@prompt``
(``prompts``), the bots (``bots``) and their requests with retries (``calls``), structured
output (``structured``), ``@metric`` (``metrics``), record and replay decisions (``cache``),
the spend guard (``spend``), the endpoint (``endpoint``) and its client's bound on a
request's whole time (``deadline``), ``Experiment`` for scripts
(``scripted``), and the process-wide settings all of these read (``process``). It imports
no pytest; it may import ``_store``, ``_verdict`` and ``_util``.
"""
