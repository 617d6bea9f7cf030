"""The package's loggers: no text they hand a handler carries a known secret.

Every module of the package logs through ``get_logger(__name__)``. Its
records pass ``redaction.scrub()`` before any handler sees them: the
message with its arguments filled in, and the formatted traceback (the
site's own code, a hook, a receiver or a tool, may have put a key in its
exception's message). A record with something to scrub carries the
scrubbed text instead: the message without its arguments, and the
traceback as ``exc_text`` (which ``logging.Formatter`` writes) with no
exception object, so a handler that formats the exception on its own (a
JSON formatter, an error tracker) finds only the scrubbed text. A record
with nothing to scrub reaches the handlers as it was logged, its exception
object included (an error tracker that reads a frame's variables sees them
as they were).

``site_code_failed()`` is how a failure of that code is logged and answered.
"""

from __future__ import annotations

import logging
import sys

from django_avaturn.exceptions import NotConfigured
from django_avaturn.upstream.redaction import scrub

_FORMATTER = logging.Formatter()


class ScrubSecrets(logging.Filter):
    """Scrub a record's message, traceback and stack where they hold a secret; never drops
    a record, never raises (a log call must not fail the code that makes it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._scrub(record)
        except Exception:
            # Unsure what the record holds: none of it is written, only where it came from.
            record.msg = f"A log record of {record.name} could not be scrubbed; not written."
            record.args = record.exc_info = record.exc_text = record.stack_info = None
        return True

    @staticmethod
    def _scrub(record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            # Arguments that do not fit the message: the template alone, scrubbed (a
            # handler reporting the record would print its arguments).
            record.msg, record.args = scrub(f"{record.msg} (its arguments did not fit)"), None
            message = record.msg
        if (clean := scrub(message)) != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            formatted = _FORMATTER.formatException(record.exc_info)
            if (clean := scrub(formatted)) != formatted:
                record.exc_text, record.exc_info = clean, None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)


_SCRUB_SECRETS = ScrubSecrets()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, its records scrubbed (``ScrubSecrets``)."""
    logger = logging.getLogger(name)
    logger.addFilter(_SCRUB_SECRETS)  # once: addFilter skips a filter already there
    return logger


logger = get_logger(__name__)


def site_code_failed(what: str) -> NotConfigured:
    """The site's own code (``what``: a hook, a class of a setting) raised: call in its
    ``except`` block. Logs its traceback (scrubbed); returns the ``NotConfigured`` to
    raise, a JSON 503 rather than Django's 500.

    Raise it ``from None``: chained, the site's exception would reach Django's own
    error handling (the ``django.request`` log, the debug page, error e-mails)
    unscrubbed when a site's view calls ``start_session()`` and lets the error
    through. And the traceback is logged as text, with no exception object: its
    frames' variables (the external engine's headers, say) would reach a handler
    that reads them, such as an error tracker's logging integration.
    """
    failure = sys.exc_info()
    text = _FORMATTER.formatException(failure) if failure[0] is not None else ""
    logger.error("%s raised\n%s", what, text)
    return NotConfigured(f"{what} raised an exception.")
