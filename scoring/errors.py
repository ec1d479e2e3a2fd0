"""The root of leadstream's errors, and the scoring engine's own families."""

from __future__ import annotations


class LeadstreamError(Exception):
    """Root of every error leadstream raises on purpose; messages say what to do."""


class ModelError(LeadstreamError):
    """A scoring model file is invalid: the message names the file, the rule and the field."""


class StateError(LeadstreamError):
    """Stored state bytes cannot be read: written by an incompatible version, or corrupt."""
