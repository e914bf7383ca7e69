"""Judging runs: numbers computed from what the database holds.

Owns the statistics (``stats``), the gate grammar (``gates``) and its evaluation
(``evaluate``), comparisons with a baseline (``compare``), what runs cost (``cost``), the
session's verdict
(``verdicts``) and whether its numbers can be trusted (``health``). Its functions read an
open ``sqlite3`` connection or plain values; the one that saves a verdict writes through
the store it is handed. It imports no pytest; it may import ``_util`` only.
"""
