"""Leaf helpers that know nothing of the rest.

Owns ids (``ids``), the clock (``clock``), compact and canonical JSON with their digests
(``jsontext``), redaction of secrets (``redact``), the defaults and checks shared by the
plugin and ``Experiment`` (``defaults``), owner-only report files (``files``), and finding
a stored row by what a person types (``lookup``). It may import the standard library and
``errors`` only.
"""
