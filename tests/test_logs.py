"""The package's loggers: every record scrubbed, none lost, no log call failing."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from django_avaturn.logs import get_logger
from tests.helpers import KEYS


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What a plain StreamHandler on the root logger writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_a_key_in_a_message_or_its_arguments_is_scrubbed(written: io.StringIO) -> None:
    logger = get_logger("django_avaturn.tests.logs")
    logger.warning("upstream said %s", f"Incorrect API key provided: {KEYS[1]}")
    logger.warning(f"an f-string with {KEYS[0]}")
    text = written.getvalue()
    assert text.count("[redacted]") == 2
    assert all(key not in text for key in KEYS)


def test_arguments_that_do_not_fit_the_message_are_not_written(written: io.StringIO) -> None:
    """logging's own error report would print the arguments, a key among them."""
    get_logger("django_avaturn.tests.logs").warning("one %s, two %s", f"Bearer {KEYS[1]}")
    text = written.getvalue()
    assert "one %s, two %s (its arguments did not fit)" in text
    assert KEYS[1] not in text


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_record_that_cannot_be_scrubbed_is_replaced_and_the_log_call_succeeds(
    written: io.StringIO,
) -> None:
    get_logger("django_avaturn.tests.logs").error(_Unprintable())
    assert written.getvalue() == (
        "A log record of django_avaturn.tests.logs could not be scrubbed; not written.\n"
    )


def test_without_django_settings_logging_works_and_credential_shapes_are_scrubbed() -> None:
    """The fake's command line logs through the package's loggers with no settings."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "from django_avaturn.logs import get_logger\n"
        "get_logger('django_avaturn.testing.fake').warning('echoed sk-abcdefghijkl0123')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "", "PYTHONPATH": ":".join(sys.path)},
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "echoed [redacted]\n", "")
