"""Reading results for people: the ``llmexp`` commands and the HTML report.

Owns what the commands read from message_log.db (``browse``, ``trends``), how they print it
(``textview``; variants side by side in ``variantview``), the commands themselves
(``commands``), and the report with its charts (``htmlreport``, ``svgcharts``, ``assets/``).
It reads the database and writes nothing in it. It may import the wings below it
(``_local``, ``_run``, ``_store``, ``_verdict``, ``_util``; today it needs only the last
three), never ``_plugin``.
"""
