"""The loggers of the libraries leadstream uses whose DEBUG lines hold what no log may keep.

At LEADSTREAM_LOG_LEVEL=debug they wrote, line by line, what leadstream's own messages take care
to leave out: the Kafka clients each request and answer as it went on the wire and each message
sent (crossings with the lead's e-mail, phone and name, dead letters with their originals), urllib3
each HTTP request's path and query (a webhook's secret path, Salesforce's SOQL with the lead's
e-mail, HubSpot's contact path with it). A log is kept, copied and shipped where `leadstream
forget` cannot reach. Their DEBUG lines are dropped, whatever the level; their INFO and above still
follow the setting.
"""

from __future__ import annotations

import logging

#: logger -> what its DEBUG lines hold.
LOGGERS = {
    "kafka.protocol.parser": "each request and answer, records' bytes included",
    "kafka.net.connection": "each request and answer, records' bytes included",
    "kafka.producer.kafka": "each message sent, key and value",
    "kafka.producer.sender": "each produce request and answer",
    "aiokafka.conn": "each request and answer, records' bytes included",
    "aiokafka.producer.producer": "each message sent, key and value",
    "urllib3.connectionpool": "each HTTP request's path and query",
}


def leave_out_what_must_not_be_logged() -> None:
    """A filter on each of LOGGERS, not a level: their INFO lines still follow the setting
    (warning leaves them out), and the libraries' other DEBUG lines (fetch positions, group
    membership, metadata) stay. Idempotent."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _above_debug not in logger.filters:
            logger.addFilter(_above_debug)


def _above_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG
