"""Protocols: which of a benchmark's splits fine-tune, select and report (docs/protocols.md)."""
