"""Structured logs: one JSON object per line on stderr."""

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, node_id: str):
        super().__init__()
        self._static = {"service": service, "node": node_id}

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), **self._static,
                "logger": record.name, "msg": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(service: str, node_id: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per push request otherwise


def fields(**kv) -> dict:
    """extra= for a log call: `log.info("started", extra=fields(port=1))`."""
    return {"fields": kv}
