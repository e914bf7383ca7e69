"""message_log.db: everything that writes it, and the files beside it.

Owns the records that cross processes as JSON (``records``), the database file and its
schema (``schema``, ``migrations``), the writer's SQL (``store``, ``batch``), where a
session's results come from (``provenance``), the spool files and their recovery
(``spool``, ``recovery``) and the cassettes of record and replay (``cassette``). It imports
no pytest; it may import ``_verdict`` (the summaries it stores) and ``_util``.
"""
