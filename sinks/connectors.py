"""The connectors `leadstream sink NAME` can run, built from settings (imports stay lazy)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sinks.base import Sink
from streams.errors import ConfigError, ServiceError, redis_trouble
from streams.settings import Settings

if TYPE_CHECKING:
    from sinks.mapping import Mapping

log = logging.getLogger("leadstream.sinks")

NAMES = ("hubspot", "salesforce", "webhook", "redis")


def build(name: str, settings: Settings) -> Sink[Any]:
    """The connector, its settings and mapping validated: errors surface before anything is read."""
    if name == "hubspot":
        from sinks.hubspot import HubSpotSink

        hubspot = HubSpotSink(settings)
        warn_of_what_no_model_has(hubspot.mapping, hubspot.lookup_traits, settings)
        return hubspot
    if name == "salesforce":
        from sinks.salesforce import SalesforceSink

        salesforce = SalesforceSink(settings)
        warn_of_what_no_model_has(salesforce.mapping, salesforce.lookup_traits, settings)
        return salesforce
    if name == "webhook":
        from sinks.webhook import WebhookSink

        return WebhookSink(settings)
    if name == "redis":
        from redis import RedisError

        from sinks.ledger import await_redis
        from sinks.redis_model import RedisModelSink, upgrade_version_keys

        kept = "where the read model is kept"
        model = RedisModelSink(settings)
        await_redis(model.redis, settings, kept)
        try:
            upgrade_version_keys(model.redis, model.prefix)
        except RedisError as exc:
            # Not started without it: a replay would not be checked against the keys it renames.
            # Told as the other connectors tell it (runner.py): it said "cannot reach Redis ...; the
            # read model starts once it answers" of a password Redis refused, and exited.
            raise ServiceError(f"cannot start without Redis, {kept}: {redis_trouble(exc, settings.redis_url)}") from None
        return model
    raise ConfigError(f"unknown connector {name!r}: one of {', '.join(NAMES)}")


def warn_of_what_no_model_has(mapping: Mapping, lookup_traits: tuple[str, ...], settings: Settings) -> None:
    """A mapping's level names, and the traits the connector finds records by, are checked against
    the models: a level's typo validated, and the crossings it meant got none of its fields, deal
    or task; a trait no model keeps (keep_traits) is in no crossing, and the crossings of leads
    without another were all dead-lettered. Warnings, not refusals: a connector may be deployed
    with another copy of the models than the workers'."""
    from scoring.errors import ModelError
    from scoring.model import load_directory
    from sinks.mapping import levels_no_model_has

    try:
        models = load_directory(settings.models_dir)
    except ModelError:
        return  # the worker and `leadstream models` say what is wrong with them
    unknown = levels_no_model_has(mapping, models)
    if unknown:
        levels = sorted({name for model in models for name in model.ladder.names})
        accounts = sorted({name for model in models if model.accounts for name in model.accounts.ladder.names})
        log.warning("the mapping names levels no model in LEADSTREAM_MODELS_DIR=%s has, so no crossing reaches them: %s "
                    "(the models' levels: %s; their accounts' levels: %s)", settings.models_dir, "; ".join(unknown),
                    ", ".join(levels), ", ".join(accounts) or "none")
    unkept = [trait for trait in lookup_traits if not any(trait in model.keep_traits for model in models)]
    if models and unkept:
        log.warning("no model in LEADSTREAM_MODELS_DIR=%s keeps the trait%s %s, by which the connector finds a lead's "
                    "record (it tries %s): crossings carry only the traits their model's keep_traits lists, so %s; "
                    "add %s to keep_traits", settings.models_dir, "s" if len(unkept) > 1 else "", " and ".join(unkept),
                    ", then ".join(lookup_traits),
                    "no lead crossing can be delivered" if len(unkept) == len(lookup_traits) else "no record is found by it",
                    " and ".join(unkept))
