"""Finding and ending stale sessions: the logic behind ``avaturn_expire_sessions``.

Avaturn has no endpoint to list running sessions, so our table is the only
record of what may still cost money. ``expire_sessions()`` reconciles it,
and can be called from the management command, a Celery task or a test.

A **live** session is stale when any of these holds (first match is recorded
as the row's ``end_detail``):

* it is older than ``older_than`` seconds (only when asked for);
* it has run past its ``max_duration`` plus ``EXPIRE_GRACE``: Avaturn's hard
  cap, so the session has certainly ended upstream;
* a site engine session whose socket never connected,
  ``SITE_ENGINE["CONNECT_WITHIN"]`` plus ``EXPIRE_GRACE`` seconds after it went
  live: its token has expired, so the avatar can never talk, heartbeats or not;
* its browser sent heartbeats, and none for ``EXPIRE_IDLE_AFTER`` seconds;
* its browser never sent one, ``EXPIRE_UNJOINED_AFTER`` seconds after it
  went live: nobody joined it (the page was left while it started);
* its OpenAI client secret expired more than ``EXPIRE_GRACE`` ago and no
  heartbeat arrived for ``EXPIRE_IDLE_AFTER`` seconds (counted from the start
  if none ever did). The secret's expiry alone proves nothing: OpenAI lets a
  started session outlive its secret, so a session still sending heartbeats
  is left alone until its ``max_duration``;
* with ``EXPIRE_IDLE_AFTER = None`` heartbeats are not consulted at all, and
  the secret's expiry (plus ``EXPIRE_GRACE``) alone ends it, in use or not.

A site whose own front end sends no heartbeats sets
``EXPIRE_UNJOINED_AFTER = None`` (or ``EXPIRE_IDLE_AFTER = None``, which
turns every heartbeat test off).

Rows left behind are cleaned up too: ``starting`` for longer than the
start's own upstream calls can take (``upstream.clients.longest_start``,
counted from the row's last write: a start stamps it while it waits for the
user's ending rows, ``transitions.resume_start``) become
``failed`` (no session id was recorded, so there is nothing we can end; if
the dead process's create had reached Avaturn, that session ends by itself,
and a WARNING says so). ``ending`` ones whose terminate failed
(``awaiting_retry``) are terminated again on every run, and so are those
left ``ending`` for ``EXPIRE_STUCK_AFTER`` by a process that died. A start
whose create had an unknown outcome (no answer in time, a 5xx) is left
``ending`` holding its slot, with nothing to terminate, until Avaturn has
ended whatever it may have created (``upstream.clients.unknown_outcome_hold``
after it was held); then it becomes ``failed``.

Stale sessions are terminated upstream (404 counts as already gone) and
recorded with status ``expired``, reason ``expired``. See ``sessions.ending``
for how this stays correct with several hosts and the admin at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.db.models import Min, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from django_avaturn.conf import SITE_ENGINE, avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.logs import get_logger
from django_avaturn.models import EndReason, Engine, Session, SessionStatus
from django_avaturn.sessions import transitions
from django_avaturn.sessions.ending import (
    DEFAULT_BATCH_SIZE,
    Result,
    ResultCallback,
    Tally,
    claimed_batches,
    preflight,
    terminate_claimed,
)
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.upstream.clients import (
    longest_in_flight,
    longest_start,
    unknown_outcome_hold,
)
from django_avaturn.validation import Bounds

Reporter = Callable[[Iterable[Result]], None]

logger = get_logger(__name__)


@dataclass(frozen=True)
class ExpiryPolicy:
    """When a session counts as stale. All durations in seconds."""

    idle: int | None
    grace: int
    # Rows left ending this long (not awaiting a retry) belong to a dead process.
    stuck_after: int
    default_max_duration: int
    older_than: int | None = None
    # No heartbeat this long after going live: nobody joined (needs ``idle``).
    unjoined: int | None = None
    # Rows left starting this long belong to a dead process (None: ``stuck_after``).
    starting_after: float | None = None
    # A create with an unknown outcome holds its row's slot this long after
    # the reservation (None: ``stuck_after``, as any row left ending).
    unknown_outcome_after: float | None = None
    # A row claimed while it was starting (ending, no session id) may still get
    # a session from its start this long after its reservation (None:
    # ``upstream.clients.longest_in_flight()``, read when the policy is applied).
    claimed_start_after: float | None = None
    # A site engine session whose socket has not connected this long (plus
    # ``grace``) after going live never will: its token has expired (None: no rule).
    engine_connect_within: int | None = None

    @classmethod
    def from_settings(
        cls, *, idle: int | None = None, older_than: int | None = None
    ) -> ExpiryPolicy:
        """The configured policy, with the command's ``idle`` and ``older_than`` over it."""
        return cls(
            idle=idle if idle is not None else avaturn_settings.EXPIRE_IDLE_AFTER,
            grace=avaturn_settings.EXPIRE_GRACE,
            stuck_after=avaturn_settings.EXPIRE_STUCK_AFTER,
            default_max_duration=avaturn_settings.MAX_DURATION,
            older_than=older_than,
            unjoined=avaturn_settings.EXPIRE_UNJOINED_AFTER,
            starting_after=longest_start(),
            unknown_outcome_after=unknown_outcome_hold(),
            engine_connect_within=_engine_connect_within(),
        )

    # ------------------------------------------------------------------ live rows

    def stale_because(self, session: Session, now: datetime) -> str | None:
        """Why a live ``session`` is stale at ``now``, or ``None`` if it is not."""
        began = session.started_at or session.created_at
        if self.older_than is not None and began < now - timedelta(seconds=self.older_than):
            return f"older than {self.older_than} s"
        cap = session.max_duration or self.default_max_duration
        if began + timedelta(seconds=cap + self.grace) < now:
            return f"ran past its max_duration of {cap} s"
        if (
            self.engine_connect_within is not None
            and session.engine == Engine.SITE
            and session.engine_connected_at is None
            and began < now - timedelta(seconds=self.engine_connect_within + self.grace)
        ):
            return f"its site engine socket did not connect within {self.engine_connect_within} s"
        secret_gone = session.expires_at is not None and (
            session.expires_at + timedelta(seconds=self.grace) < now
        )
        if self.idle is None:
            return "client secret expired" if secret_gone else None
        silent_since = now - timedelta(seconds=self.idle)
        if session.last_seen_at is not None:
            if session.last_seen_at < silent_since:
                return f"no heartbeat for more than {self.idle} s"
            return None
        # Never a heartbeat: activation does not set last_seen_at, only one does.
        if self.unjoined is not None and began < now - timedelta(seconds=self.unjoined):
            return f"no heartbeat within {self.unjoined} s of going live (never joined)"
        if secret_gone and began < silent_since:
            return f"client secret expired, no heartbeat for {self.idle} s"
        return None

    def stale_filter(self, now: datetime, *, min_max_duration: int) -> Q:
        """A SQL superset of ``stale_because``, to pick candidate rows (annotated ``began``).

        Exact but for ``max_duration``, which varies per row: rows past the
        smallest one are candidates, and ``stale_because`` decides.
        """
        q = Q(began__lt=now - timedelta(seconds=min_max_duration + self.grace))
        secret_gone = Q(expires_at__lt=now - timedelta(seconds=self.grace))
        if self.idle is None:
            q |= secret_gone
        else:
            silent_since = now - timedelta(seconds=self.idle)
            q |= Q(last_seen_at__lt=silent_since)
            q |= secret_gone & Q(last_seen_at__isnull=True, began__lt=silent_since)
            if self.unjoined is not None:
                unjoined_since = now - timedelta(seconds=self.unjoined)
                q |= Q(last_seen_at__isnull=True, began__lt=unjoined_since)
        if self.engine_connect_within is not None:
            q |= Q(
                engine=Engine.SITE,
                engine_connected_at__isnull=True,
                began__lt=now - timedelta(seconds=self.engine_connect_within + self.grace),
            )
        if self.older_than is not None:
            q |= Q(began__lt=now - timedelta(seconds=self.older_than))
        return q


def _engine_connect_within() -> int:
    """``SITE_ENGINE["CONNECT_WITHIN"]``; the longest it may be when the section is malformed.

    A section the checks report (E003) must not stop the expiry command, the
    backstop of every site's spending, from ending anything; and the longest
    allowed value never ends a site engine session whose token may still be good.
    """
    try:
        return int(avaturn_settings.SITE_ENGINE["CONNECT_WITHIN"])
    except NotConfigured as exc:
        rule = next(rule for key, _, rule in SITE_ENGINE.fields if key == "CONNECT_WITHIN")
        assert isinstance(rule, Bounds)
        assert rule.high is not None
        logger.warning(
            "%s The expiry command takes CONNECT_WITHIN as %s s, its longest.", exc, rule.high
        )
        return rule.high


@dataclass
class ExpiryReport:
    """What a run did (or, dry, would do)."""

    tally: Tally
    dry_run: bool

    @property
    def failed(self) -> int:
        return self.tally.failed


def expire_sessions(
    *,
    policy: ExpiryPolicy | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    upstream: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_result: ResultCallback | None = None,
) -> ExpiryReport:
    """End every stale session and clean up rows a crashed process left behind.

    ``dry_run`` reports what would be done and changes nothing.
    ``upstream=False`` records sessions as expired without calling Avaturn.
    ``on_result`` is called once per row handled (in the calling thread).
    """
    policy = policy or ExpiryPolicy.from_settings()
    if upstream and not dry_run:
        preflight()
    now = now or timezone.now()
    tally = Tally()
    report = tally.reporter(on_result)

    starting_after = policy.stuck_after if policy.starting_after is None else policy.starting_after
    _fail_stuck_starts(now - timedelta(seconds=starting_after), dry_run, batch_size, report)
    stuck_since = now - timedelta(seconds=policy.stuck_after)
    unknown_after = (
        policy.stuck_after if policy.unknown_outcome_after is None else policy.unknown_outcome_after
    )
    unknown_since = now - timedelta(seconds=unknown_after)
    claimed_start_after = (
        longest_in_flight() if policy.claimed_start_after is None else policy.claimed_start_after
    )
    claimed_start_over = transitions.claimed_start_calls_over(now, claimed_start_after)
    _retry_stuck_ends(
        stuck_since, unknown_since, claimed_start_over, dry_run, upstream, batch_size, report
    )
    _expire_live(policy, now, dry_run, upstream, batch_size, report)
    return ExpiryReport(tally=tally, dry_run=dry_run)


def _fail_stuck_starts(
    stuck_since: datetime, dry_run: bool, batch_size: int, report: Reporter
) -> None:
    # No session id recorded, so nothing we can end. If the starting process
    # is merely slow, it finds its row no longer starting and terminates
    # whatever Avaturn created for it; if it died mid-create, Avaturn may run
    # a session nobody can name until its user_absent_timeout.
    detail = "never finished starting"

    def claim_stuck(rows: list[Session]) -> list[Session]:
        if dry_run:
            return rows
        return transitions.fail_stuck_starts(rows, detail=detail, untouched_since=stuck_since)

    # Not written since: a start that waited for the user's ending rows stamps
    # its row before its own upstream calls (``transitions.resume_start``).
    # ``created_at`` is never later than ``updated_at``; it lets the active-row
    # index find the candidates.
    queryset = Session.objects.filter(
        status=SessionStatus.STARTING, created_at__lt=stuck_since, updated_at__lt=stuck_since
    )
    outcome = Outcome.WOULD_END if dry_run else Outcome.MARKED
    for rows in claimed_batches(
        queryset, claim_stuck, batch_size=batch_size, lock=not dry_run, skip_locked=True
    ):
        report(Result(row, outcome, detail) for row in rows)
        if rows and not dry_run:
            logger.warning(
                "Marked %d session start(s) failed that never finished (a process died "
                "mid-start?). If one had reached Avaturn's create, that session cannot be "
                "named; it ends by itself within its user_absent_timeout=%ss.",
                len(rows),
                avaturn_settings.USER_ABSENT_TIMEOUT,
            )


def _retry_stuck_ends(
    stuck_since: datetime,
    unknown_since: datetime,
    claimed_start_over: Q,
    dry_run: bool,
    upstream: bool,
    batch_size: int,
    report: Reporter,
) -> None:
    # Their terminate failed (awaiting_retry), or the process that claimed
    # them died before it finished them: claim them again (a fresh stamp, so
    # two hosts cannot both) and finish the job. A start whose create had an
    # unknown outcome holds its slot until Avaturn has ended whatever it may
    # have created (reserved before ``unknown_since``), then ends failed.
    def claim_stuck(rows: list[Session]) -> list[Session]:
        if dry_run:
            return rows
        return transitions.claim_rows(
            rows,
            from_status=SessionStatus.ENDING,
            detail_for=lambda row: row.end_detail or "stuck ending",
            status=SessionStatus.ENDING,
            awaiting_retry=False,
        )

    unknown = transitions.unknown_outcome()
    stuck = (Q(awaiting_retry=True) | Q(updated_at__lt=stuck_since)) & ~unknown
    # Claimed while starting: its start, if alive, still ends what it creates,
    # until it can make no upstream call (``claimed_start_over``, the bound the
    # user's next start waits for). Finished before, its slot would free while
    # a session may still be created.
    stuck &= Q(session_id__isnull=False) | claimed_start_over
    queryset = Session.objects.filter(status=SessionStatus.ENDING).filter(
        stuck | (unknown & Q(updated_at__lt=unknown_since))
    )
    for rows in claimed_batches(
        queryset, claim_stuck, batch_size=batch_size, lock=not dry_run, skip_locked=True
    ):
        if dry_run:
            report(Result(row, Outcome.WOULD_END, "stuck ending") for row in rows)
            continue
        for row in rows:
            row.end_reason = row.end_reason or EndReason.EXPIRED
        # Whoever claimed these meant them to end: one whose terminate fails
        # again stays ending, awaiting_retry, for the next run; never live.
        report(
            terminate_claimed(
                [row for row in rows if row.session_id], upstream=upstream, release=False
            )
        )
        # Claimed while still starting, by a start that never finished: nothing upstream.
        orphans = [row for row in rows if not row.session_id]
        if orphans:
            transitions.finish_claimed(orphans, notify=False, only_without_id=True)
            report(Result(row, Outcome.MARKED, row.end_detail) for row in orphans)


def _expire_live(
    policy: ExpiryPolicy,
    now: datetime,
    dry_run: bool,
    upstream: bool,
    batch_size: int,
    report: Reporter,
) -> None:
    live = Session.objects.primary().live()
    smallest = live.aggregate(smallest=Min("max_duration"))["smallest"]
    min_max_duration = min(smallest or policy.default_max_duration, policy.default_max_duration)
    candidates = live.alias(began=Coalesce("started_at", "created_at")).filter(
        policy.stale_filter(now, min_max_duration=min_max_duration)
    )
    reasons: dict[object, str] = {}
    # Rows only ``older_than`` (an operator's one-off) finds stale: a plain run would not.
    by_rules = replace(policy, older_than=None)
    asked_for: set[object] = set()

    def claim_stale(rows: list[Session]) -> list[Session]:
        reasons.clear()
        asked_for.clear()
        for row in rows:
            because = policy.stale_because(row, now)
            if because is not None:
                reasons[row.pk] = because
                if policy.older_than is not None and by_rules.stale_because(row, now) is None:
                    asked_for.add(row.pk)
        stale = [row for row in rows if row.pk in reasons]
        if dry_run:
            return stale
        return transitions.claim_rows(
            stale,
            from_status=SessionStatus.LIVE,
            detail_for=lambda row: reasons[row.pk],
            status=SessionStatus.ENDING,
            end_reason=EndReason.EXPIRED,
        )

    for claimed in claimed_batches(
        candidates, claim_stale, batch_size=batch_size, lock=not dry_run, skip_locked=True
    ):
        if dry_run:
            report(Result(row, Outcome.WOULD_END, reasons[row.pk]) for row in claimed)
        else:
            # One whose terminate fails goes back to live, and the next run, finding it
            # stale still, ends it; one only ``older_than`` found stale would never be
            # found again, so it stays ending, awaiting_retry, for the next run to retry.
            rules = [row for row in claimed if row.pk not in asked_for]
            asked = [row for row in claimed if row.pk in asked_for]
            report(terminate_claimed(rules, upstream=upstream))
            report(terminate_claimed(asked, upstream=upstream, release=False))
