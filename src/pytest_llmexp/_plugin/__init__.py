"""The pytest shell: everything that knows pytest.

Owns the ``--llm-*`` options and ``llm_*`` ini keys (``settings``; those of variants, judges
and prices in ``variants``), turning ``@experiment`` tests into items (``collect``), one run
per item attached to its report (``relay``), the one process that writes the database
(``intake``, ``writer``), the session's end and exit status (``conclusion``, ``reports``,
``terminal``, ``signals``, ``github`` for GitHub Actions), the embedded model in a session
(``localmodel``), when each of these is made (``wiring``), and the names that cross
processes (``keys``, a leaf). It may import every wing below it: ``_view``, ``_local``,
``_run``, ``_store``, ``_verdict``, ``_util``. Only ``plugin.py`` imports it.
"""
