"""Errors of the stream side of leadstream (services, worker, CLI).

Every error leadstream raises on purpose derives from `scoring.errors.LeadstreamError`; each
family has one class here, and its message says what to do about it.
"""

from __future__ import annotations

from scoring.errors import LeadstreamError


class ConfigError(LeadstreamError):
    """A setting (environment variable) has a value leadstream cannot use."""


class ServiceError(LeadstreamError):
    """A local service (Kafka, Redis) could not be installed, started, reached or stopped."""


class InputError(LeadstreamError):
    """A file or message given to a command is not what it expects."""
