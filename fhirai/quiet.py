"""pydicom without its value warnings: they quote the offending value ("Invalid value for VR PN:
'...'"), which is PHI, and must not reach a log (DESIGN: no PHI in logs)."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_BELOW_ERROR = _BelowError()
_quiet_lock = threading.Lock()
_quiet_users = [0]  # how many threads are inside pydicom_quiet(): the filter goes with the last


@contextmanager
def pydicom_quiet() -> Iterator[None]:
    """pydicom's warnings silenced, on the logger as well: its value warnings quote the offending
    value ("Invalid value for VR PN: '...'"), which is PHI. Its errors (decoders) still log."""
    logger = logging.getLogger("pydicom")
    with _quiet_lock:
        _quiet_users[0] += 1
        logger.addFilter(_BELOW_ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        with _quiet_lock:
            _quiet_users[0] -= 1
            if not _quiet_users[0]:
                logger.removeFilter(_BELOW_ERROR)
