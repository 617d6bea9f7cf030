"""``manage.py avaturn_expire_sessions``: a thin shell over ``expiry.expire_sessions()``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.sessions.ending import DEFAULT_BATCH_SIZE, Result
from django_avaturn.sessions.expiry import ExpiryPolicy, ExpiryReport, expire_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.sessions.retention import purge_transcripts, retention_days

# Upper bounds that still mean something, so a typo is an argparse error
# rather than an OverflowError from timedelta or a database out of range.
TEN_YEARS_SECONDS = 10 * 366 * 86400
MAX_BATCH_SIZE = 100_000


def _positive_int(high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number.") from None
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from 1 to {high}.")
        return value

    return parse


class Command(BaseCommand):
    help = (
        "End stale Avaturn sessions: terminate them upstream and record them as expired. "
        "Also cleans up rows a crashed process left starting or ending. Safe to run from "
        "cron on several hosts at once. Exits non-zero when any upstream termination failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List what would be ended; change nothing and call nothing upstream.",
        )
        parser.add_argument(
            "--older-than",
            type=_positive_int(TEN_YEARS_SECONDS),
            metavar="SECONDS",
            help="Also end live sessions that started more than SECONDS ago.",
        )
        parser.add_argument(
            "--idle",
            type=_positive_int(TEN_YEARS_SECONDS),
            metavar="SECONDS",
            help="Heartbeat silence that makes a session stale (default: EXPIRE_IDLE_AFTER).",
        )
        parser.add_argument(
            "--batch-size",
            type=_positive_int(MAX_BATCH_SIZE),
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"Rows claimed per transaction (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--purge-transcripts-older-than",
            type=_positive_int(TEN_YEARS_SECONDS // 86400),
            metavar="DAYS",
            help="Delete transcripts older than DAYS (default: TRANSCRIPT_RETENTION_DAYS; "
            "none are deleted when neither is set).",
        )
        parser.add_argument(
            "--no-upstream",
            action="store_true",
            help="Record sessions as expired without asking Avaturn to terminate them.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity: int = options["verbosity"]

        usernames: dict[Any, str] = {}

        def username(user_id: Any) -> str:
            # Once per user and run: a batch of one user's sessions costs one query.
            if user_id not in usernames:
                user = get_user_model()._default_manager.filter(pk=user_id).first()
                usernames[user_id] = user.get_username() if user is not None else f"#{user_id}"
            return usernames[user_id]

        # Sessions --no-upstream recorded as ended without terminating them.
        unterminated = 0

        def on_result(result: Result) -> None:
            nonlocal unterminated
            if result.outcome is Outcome.MARKED and result.session.session_id:
                unterminated += 1
            user = username(result.session.user_id)
            line = f"{result.session} (user {user}): {result.outcome.value}"
            if result.detail:
                line += f", {result.detail}"
            if result.outcome is Outcome.FAILED:
                # Errors are shown at every verbosity, cron mails them.
                self.stderr.write(line)
            elif verbosity >= 2:
                self.stdout.write(line)

        try:
            policy = ExpiryPolicy.from_settings(
                idle=options["idle"], older_than=options["older_than"]
            )
            report = expire_sessions(
                policy=policy,
                dry_run=options["dry_run"],
                upstream=not options["no_upstream"],
                batch_size=options["batch_size"],
                on_result=on_result,
            )
            absent_timeout = avaturn_settings.USER_ABSENT_TIMEOUT
            keep_days = retention_days(options["purge_transcripts_older_than"])
            purged = (
                purge_transcripts(older_than_days=keep_days, dry_run=options["dry_run"])
                if keep_days is not None
                else None
            )
        except NotConfigured as exc:
            raise CommandError(str(exc)) from exc

        if unterminated:
            # At every verbosity, on stderr: these may still cost money at Avaturn.
            self.stderr.write(
                self.style.WARNING(
                    f"{unterminated} session(s) recorded as ended without asking Avaturn to "
                    "terminate them (--no-upstream): any still running there runs on until "
                    f"Avaturn ends it (at its max_duration, or user_absent_timeout="
                    f"{absent_timeout}s after its visitor left)."
                )
            )
        if verbosity >= 1:
            self.stdout.write(self._summary(report))
            if purged is not None:
                verb = "Would delete" if options["dry_run"] else "Deleted"
                self.stdout.write(
                    f"{verb} {purged} transcript line(s) older than {keep_days} day(s)."
                )
        if report.failed:
            raise CommandError(
                f"{report.failed} upstream termination(s) failed; those sessions stay "
                "recorded (live if only stale, else ending: an end already asked for, or "
                "--older-than) and a later run retries them."
            )

    def _summary(self, report: ExpiryReport) -> str:
        tally = report.tally
        if report.dry_run:
            return self.style.WARNING(
                f"Dry run: would end {tally[Outcome.WOULD_END]} session(s); nothing changed."
            )
        text = (
            f"Expired {tally.ended} session(s): {tally[Outcome.TERMINATED]} terminated, "
            f"{tally[Outcome.ALREADY_GONE]} already gone, {tally[Outcome.MARKED]} marked "
            f"without an upstream call; {tally.failed} failed."
        )
        return self.style.ERROR(text) if tally.failed else self.style.SUCCESS(text)
