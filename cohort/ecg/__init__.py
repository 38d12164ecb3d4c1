"""Resting 12-lead ECGs: the common in-memory record, source-format readers, and signal synthesis."""
