"""Reading results for people: the ``llmexp`` commands and the HTML report.

Owns what the commands read from message_log.db (``browse``, ``runview``, ``trends``), how
they print it (``textview``), the commands themselves (``commands``), and the report with
its charts (``htmlreport``, ``svgcharts``, ``assets/``). It reads the database and writes
nothing in it. It may import ``_store``, ``_verdict``, ``_util`` and ``_run``'s endpoint
settings; never ``_plugin``.
"""
