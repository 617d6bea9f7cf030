"""Ending sessions: one (``end_session``) or many (``end_sessions``), and the terminate they share.

Every end terminates through ``terminate_claimed``, then finishes the rows
through ``transitions``. A single end claims its row and terminates it
(``end_claimed``). Bulk ends (the admin, the kill switch, user events, the
expiry command) work one batch of rows at a time, safely beside other hosts
and other callers:

1. **Claim**, in one short transaction: lock the next batch of rows by
   primary key (for the expiry command ``SELECT ... FOR UPDATE SKIP LOCKED``
   where the database has it, so several hosts share the work instead of
   queueing; the admin waits for a row another transaction holds), move the ones
   still live to ``ENDING`` with a conditional ``UPDATE`` that writes a claim
   stamp, and read back which rows carry the stamp. Those, and only those,
   are this caller's: a racing admin click, ``end_session()`` or another
   host's command sees them as no longer live and stands back.
2. **Terminate** the claimed sessions upstream, outside any transaction, a
   bounded number at a time (``upstream.pool.run_bounded``).
3. **Finish** them in bulk (``transitions``): terminated or already
   gone rows get their final status; failed ones stay ending, awaiting the
   expiry command's next run (or, for what the expiry command's own rules
   found stale, go back to live so that its next run judges them again).

Each step costs a fixed number of queries per batch, and only one batch of
rows is held in memory, however many sessions there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connections, transaction
from django.db.models import Q, QuerySet

from django_avaturn.exceptions import AvaturnError, NotConfigured, UpstreamError
from django_avaturn.logs import get_logger
from django_avaturn.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    EndReason,
    Session,
    SessionStatus,
    sessions_database,
)
from django_avaturn.sessions import abandonment, statements, transitions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.upstream.clients import get_avaturn_client
from django_avaturn.upstream.pool import run_bounded, terminate_concurrency
from django_avaturn.upstream.redaction import excerpt

logger = get_logger(__name__)

DEFAULT_BATCH_SIZE = 500
# EndReason.values builds its list anew at each read.
END_REASONS = frozenset(EndReason.values)

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    session: Session
    outcome: Outcome
    # Why it was chosen, or for a failure the scrubbed upstream error.
    detail: str = ""
    # For a failed terminate: what it raised.
    error: Exception | None = field(default=None, compare=False, repr=False)


ResultCallback = Callable[[Result], None]


@dataclass
class Tally:
    """How many sessions ended which way; counts only, so memory stays flat."""

    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    # The first few failures, for a message a person reads.
    failures: list[str] = field(default_factory=list)

    MAX_FAILURES_KEPT = 5

    def reporter(self, on_result: ResultCallback | None) -> Callable[[Iterable[Result]], None]:
        """A callback that counts each result here, then hands it to ``on_result``."""

        def report(results: Iterable[Result]) -> None:
            for result in results:
                self.add(result)
                if on_result is not None:
                    on_result(result)

        return report

    def add(self, result: Result) -> None:
        self.counts[result.outcome] += 1
        if result.outcome is Outcome.FAILED and len(self.failures) < self.MAX_FAILURES_KEPT:
            self.failures.append(f"{result.session}: {result.detail}")

    def __getitem__(self, outcome: Outcome) -> int:
        return self.counts[outcome]

    @property
    def ended(self) -> int:
        return self[Outcome.TERMINATED] + self[Outcome.ALREADY_GONE] + self[Outcome.MARKED]

    @property
    def failed(self) -> int:
        return self[Outcome.FAILED]


# --------------------------------------------------------------------------- batches


def claimed_batches(
    queryset: QuerySet[Session],
    claim_batch: Callable[[list[Session]], T],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lock: bool = True,
    skip_locked: bool = False,
) -> Iterator[T]:
    """Walk ``queryset`` in primary-key batches: claim each in a short transaction.

    ``claim_batch(rows)`` runs inside the batch's transaction, with the rows
    locked when ``lock`` is true; its return value is yielded after the
    commit, so the caller's upstream calls happen outside any transaction.
    Keyset pagination (``pk > last``), not offsets: claimed rows leave the
    queryset, and an offset would skip others.

    ``skip_locked`` (where the database has it) passes over rows another
    transaction holds, for good: only for a caller that runs again (the
    expiry command, whose hosts then share the work). One that must end every
    row it was given waits for them instead; the holders (a heartbeat, an
    activation) are single-row UPDATEs.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    base = _batch_source(queryset).order_by("pk")
    alias = sessions_database()
    features = connections[alias].features
    last_pk: Any = None
    while True:
        page = base if last_pk is None else base.filter(pk__gt=last_pk)
        with transaction.atomic(using=alias):
            if lock and skip_locked and features.has_select_for_update_skip_locked:
                page = page.select_for_update(skip_locked=True)
            elif lock and features.has_select_for_update:
                page = page.select_for_update()
            rows = list(page[:batch_size])
            if not rows:
                return
            claimed = claim_batch(rows)
        last_pk = rows[-1].pk
        yield claimed
        if len(rows) < batch_size:
            return


def _batch_source(queryset: QuerySet[Session]) -> QuerySet[Session]:
    """The rows to walk, in a form that FOR UPDATE accepts and that pages in O(batch).

    A plain filter on the session table is walked as is: each page is then an
    index range scan on the primary key. A queryset that joins (select_related,
    an admin search on the user) or is DISTINCT is re-selected by primary key,
    because neither mixes with FOR UPDATE; that form costs a scan of the
    candidates per page (on SQLite, measured in benchmarks/: 16 s for 100,000
    stale rows, 93 s for 300,000), so the expiry command must not need it.
    Either way the rows are read where they are written, as they are claimed.
    """
    query = queryset.query
    plain = (
        queryset.model is Session
        and len(query.alias_map) <= 1
        and not query.distinct
        and not query.select_related
        and not query.combinator
        and not query.is_sliced
    )
    if plain:
        return queryset.order_by().using(sessions_database())
    return Session.objects.primary().filter(pk__in=queryset.order_by().values("pk"))


# --------------------------------------------------------------------------- terminate


def preflight() -> None:
    """Fail on a missing key or bad setting before any row is claimed, not after."""
    get_avaturn_client()
    terminate_concurrency()


def terminate_claimed(
    rows: Sequence[Session],
    *,
    upstream: bool = True,
    release: bool = True,
    max_workers: int | None = None,
) -> list[Result]:
    """Terminate rows this caller claimed (``ENDING``, with a session id) and finish them.

    The one terminate-then-finish: a single end, a start's replaced
    sessions, the admin's and the kill switch's bulk ends and the expiry
    command all come through here. With ``upstream`` false nothing is sent
    to Avaturn: the rows are recorded as ended (``MARKED``), for sessions
    known to be over already. A row whose terminate fails goes back to
    ``LIVE`` where ``transitions.release_claimed`` allows (a later end
    retries it), unless ``release`` is false: then it stays ``ENDING``,
    ``awaiting_retry``, for rows that must not read as live again (a start's
    orphan, an end staff asked for), and the expiry command's next run
    retries it. A failed row's ``Result`` carries the error. At most
    ``max_workers`` terminates are in flight at once (``TERMINATE_CONCURRENCY``
    by default).
    """
    if not rows:
        return []
    if not upstream:
        transitions.finish_claimed(rows)
        for row in rows:
            logger.info(
                "Recorded Avaturn session %s as ended (%s) without calling Avaturn",
                row.session_id,
                row.end_reason,
            )
        return [Result(row, Outcome.MARKED, row.end_detail) for row in rows]

    try:
        client = get_avaturn_client()
    except NotConfigured:
        # Nothing was sent, and nothing can be until the setting is fixed.
        if release:
            transitions.release_claimed(rows, sent=False)
        raise

    def terminate(row: Session) -> bool:
        assert row.session_id is not None
        return client.terminate_session(row.session_id)

    answers = run_bounded(terminate, rows, max_workers=max_workers)
    done: list[Session] = []
    failed: list[Session] = []
    results: list[Result] = []
    for row, answer in zip(rows, answers, strict=True):
        if isinstance(answer, Exception):
            failed.append(row)
            results.append(Result(row, Outcome.FAILED, _describe(answer), error=answer))
        else:
            done.append(row)
            outcome = Outcome.TERMINATED if answer else Outcome.ALREADY_GONE
            results.append(Result(row, outcome, row.end_detail))
    if done:
        # finish_claimed sets the final fields on the instances too: no read back.
        transitions.finish_claimed(done)
        for row, answer in zip(rows, answers, strict=True):
            if not isinstance(answer, Exception):
                logger.info(
                    "Ended Avaturn session %s (%s)%s",
                    row.session_id,
                    row.end_reason,
                    "" if answer else ", already gone upstream",
                )
    if failed:
        (transitions.release_claimed if release else transitions.await_retry)(failed)
    # Anything but our own errors is a bug: surface it after the rows are consistent.
    for answer in answers:
        if isinstance(answer, Exception) and not isinstance(answer, AvaturnError):
            raise answer
    return results


def end_claimed(session: Session) -> Outcome:
    """Terminate one live row this caller claimed, then finish it; raise if Avaturn would not.

    On failure the row is as ``transitions.release_claimed`` left it (back
    to live for an asker who retries, else ending for the expiry command),
    re-read, and the ``AvaturnError`` propagates.
    """
    try:
        (result,) = terminate_claimed([session])
    except NotConfigured:
        transitions.refresh_if_present(session)
        raise
    if result.error is not None:
        transitions.refresh_if_present(session)
        raise result.error
    return result.outcome


def _describe(exc: Exception) -> str:
    if isinstance(exc, UpstreamError):
        return exc.describe()
    return excerpt(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- the admin's way in


@dataclass(frozen=True)
class _Claimed:
    """What ``end_sessions`` claimed of one batch of ``rows``."""

    rows: list[Session]
    live: list[Session]
    starting: list[Session]
    retrying: list[Session]
    in_flight: list[Session]


def end_sessions(
    queryset: QuerySet[Session],
    *,
    reason: str,
    detail: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_result: ResultCallback | None = None,
) -> Tally:
    """End every session in ``queryset``, whatever its status; none may run on.

    Live sessions are terminated upstream; one whose terminate fails stays
    ending, for the expiry command's next run, never live again. Starting
    ones are claimed for their own request to terminate (as ``end_session()``
    does). Ending ones: those awaiting a retry are terminated now; those whose
    end is in flight elsewhere are taken over (``ALREADY_ENDING``), so that
    end, if it fails, leaves them for the expiry command instead of putting
    them back to live. Ended ones are skipped.
    """
    if reason not in END_REASONS:
        raise ValueError(f"Unknown end reason {reason!r}.")
    preflight()
    tally = Tally()
    report = tally.reporter(on_result)

    def reason_detail(row: Session) -> str:
        return detail

    def claim_batch(rows: list[Session]) -> _Claimed:
        # Read before the claims below move rows to ENDING.
        ending = [row for row in rows if row.status == SessionStatus.ENDING]
        live = transitions.claim_rows(
            rows,
            from_status=SessionStatus.LIVE,
            detail_for=reason_detail,
            status=SessionStatus.ENDING,
            end_reason=reason,
        )
        starting = transitions.claim_rows(
            rows,
            from_status=SessionStatus.STARTING,
            detail_for=reason_detail,
            status=SessionStatus.ENDING,
            end_reason=reason,
        )
        # Left for a retry, nobody's now: retried here, with the reason they have.
        retrying = transitions.claim_rows(
            [row for row in ending if row.awaiting_retry and row.session_id],
            from_status=SessionStatus.ENDING,
            detail_for=lambda row: "",
            only=Q(awaiting_retry=True),
            status=SessionStatus.ENDING,
            awaiting_retry=False,
        )
        retried = {row.pk for row in retrying}
        in_flight = [row for row in ending if row.pk not in retried and not row.awaiting_retry]
        transitions.take_over(in_flight)
        return _Claimed(rows, live, starting, retrying, in_flight)

    for batch in claimed_batches(queryset, claim_batch, batch_size=batch_size):
        handled = {row.pk for row in (*batch.live, *batch.starting, *batch.retrying)}
        handled.update(row.pk for row in batch.in_flight)
        report(Result(row, Outcome.SKIPPED) for row in batch.rows if row.pk not in handled)
        # A starting row's own request terminates whatever Avaturn creates for
        # it: not terminated yet, so not reported as terminated.
        report(Result(row, Outcome.STOPPED, detail) for row in batch.starting)
        report(Result(row, Outcome.ALREADY_ENDING, row.end_detail) for row in batch.in_flight)
        report(terminate_claimed([*batch.live, *batch.retrying], release=False))
    return tally


# --------------------------------------------------------------------------- one session


def end_session(session: Session, *, reason: str, detail: str = "") -> Outcome:
    """End ``session`` now: terminate it upstream once and record ``reason`` once.

    Returns ``TERMINATED``, or ``ALREADY_GONE`` when Avaturn had ended it by
    itself. Idempotent: ending an ended session returns ``SKIPPED`` without
    calling Avaturn; so does one whose end is in flight elsewhere, which is
    taken over so that end cannot be undone. A session still starting is
    claimed and returns ``STOPPED``: its own request terminates what Avaturn
    creates. If Avaturn cannot be reached the ``UpstreamError`` propagates
    and the row goes back to live for a retry when its asker retries (the
    visitor, a replacing start, the expiry command; see
    ``transitions.release_claimed``), else stays ending for the expiry
    command's next run.
    """
    if reason not in END_REASONS:
        raise ValueError(f"Unknown end reason {reason!r}.")
    # Another end's claim may be released (its terminate failed, or its start was
    # abandoned) between a failed claim, its re-read and the take-over: a row found
    # live again is claimed again (three rounds at most).
    for _ in range(3):
        if transitions.claim_for_end(session, reason=reason, detail=detail):
            return _end_claimed_for(session)
        # (claim_for_end re-read the row.)
        if session.status == SessionStatus.ENDING and not session.awaiting_retry:
            if transitions.take_over([session]):
                return Outcome.SKIPPED  # the end in flight cannot be undone now
            if not transitions.refresh_if_present(session):
                return Outcome.SKIPPED
        if session.status not in transitions.CAPPED_STATUSES:
            return Outcome.SKIPPED  # ended, gone, or the expiry command's to retry
    return Outcome.SKIPPED


def end_own_session(
    session_id: str, user_pk: Any, *, reason: str, detail: str = ""
) -> Outcome | None:
    """``end_session()`` of the session ``session_id`` of the user ``user_pk``; None if none.

    The API's end: where the database can, the statement that finds the
    user's row claims it too (``transitions.claim_own_for_end``), one
    statement fewer on every Stop. A row that statement does not claim (not
    the user's, ended, ending) is read and goes through ``end_session()``.
    """
    if reason not in END_REASONS:
        raise ValueError(f"Unknown end reason {reason!r}.")
    claimed = transitions.claim_own_for_end(session_id, user_pk, reason=reason, detail=detail)
    if claimed is not None:
        return _end_claimed_for(claimed)
    session = statements.own_row(session_id, user_pk)
    if session is None:
        return None
    if session.status in FINAL_STATUSES:
        # Over for good (a final status never changes): a repeated Stop claims nothing.
        return Outcome.SKIPPED
    return end_session(session, reason=reason, detail=detail)


def _end_claimed_for(session: Session) -> Outcome:
    """The rest of an end, for ``session`` claimed by it (moved from starting or live to ending)."""
    if session.started_at is None:  # only an activation sets it
        # Claimed while starting: its own request terminates what Avaturn creates.
        return Outcome.STOPPED
    return end_claimed(session)


def abandon_start(user: AbstractBaseUser, client_ref: str) -> None:
    """The caller's page left its start named ``client_ref``: leave nothing of it running.

    Idempotent, and only ever about ``user``'s own starts. A start still
    starting is claimed, and its own request terminates what Avaturn creates
    the moment the create returns; one already live is ended now; one whose
    row does not exist yet (this request overtook it) is remembered, and
    refused once its row is reserved. One whose end is in flight (its Stop
    terminating) is taken over: the page that would retry a failed Stop is
    gone, so a failed terminate leaves it ending for the expiry command.
    Raises ``UpstreamError`` when Avaturn could not end a live one (it stays
    ending, awaiting the expiry command's retry).
    """
    # First, before looking for the row: see abandonment for why.
    abandonment.remember(user.pk, client_ref)
    failure: AvaturnError | None = None
    # One read, then each row as end_session finds it: one a racing start has
    # claimed since (ending now) is taken over, so that start cannot put it
    # back. Read twice (the ending ones, then the others), a row claimed
    # between the two reads would be missed by both.
    mine = Session.objects.primary().filter(
        user_id=user.pk, client_ref=client_ref, status__in=ACTIVE_STATUSES
    )
    database_failure: DatabaseError | None = None
    for session in mine:
        # Each row is tried, whatever an earlier one raised: one left alone could be
        # a start still starting that would go live with no page.
        try:
            end_session(session, reason=EndReason.ABANDONED)
        except AvaturnError as exc:
            failure = failure or exc
        except DatabaseError as exc:
            database_failure = database_failure or exc
    if database_failure is not None:
        raise database_failure
    if failure is not None:
        raise failure
