"""Operational logs as JSON lines on standard error.

Every line carries the pid, so lines from several workers can be told
apart, and an `event` name that alerting can match on without parsing
the message.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({})))


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        item = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "pid": os.getpid(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in item:
                item[key] = value
        if record.exc_info:
            item["exc"] = self.formatException(record.exc_info)
        return json.dumps(item, default=str)


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("edgeward")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
