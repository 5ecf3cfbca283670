"""Readers that map real-world exports into the canonical tables of `pipeline.contract`.

Each reader has a pure mapping function (frame in, tables + report out) and leaves file I/O to
`pipeline/commands/ingest.py`. `SOURCES` names the readers `returnrisk ingest --source` accepts.
"""

from __future__ import annotations

SOURCES = ("uci-online-retail",)
