"""Logging: one JSON object per line (or plain text for humans with CHIRP_LOG_JSON=0)."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime

from storage.request_id import current_request_id
from web.settings import Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def logging_config(settings: Settings) -> dict[str, object]:
    """A dictConfig, also handed to uvicorn so that its worker processes log the same way."""
    formatter: dict[str, object] = (
        {"()": "web.logs.JsonFormatter"}
        if settings.log_json
        else {"format": "%(levelname)s %(name)s %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "chirp", "stream": "ext://sys.stderr"}
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chirp": formatter},
        "handlers": {"chirp": handler},
        "root": {"handlers": ["chirp"], "level": level},
        "loggers": {
            **{
                name: {"handlers": ["chirp"], "level": level, "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "piccolo")
            },
            # httpx logs every request at INFO: each search and index call to Typesense.
            "httpx": {"level": "WARNING"},
        },
    }


def configure_logging(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings))
