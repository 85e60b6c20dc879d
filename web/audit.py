"""`chirp audit [--repair]`: home timelines, counters and the search index compared with
Postgres, drift reported and, when asked, repaired and audited again. The comparisons are in
storage/audit.py (timelines, counters, a user's documents) and storage/search_sync.py (the
index as a whole, as `chirp search verify` does)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec

from storage.audit import (
    CounterAuditor,
    CounterFindings,
    CounterRepair,
    IndexDrift,
    TimelineAuditor,
    TimelineDrift,
    TimelineFindings,
    audit_index,
    tweets_to_index_check,
)
from storage.redis_store import REDIS_ERRORS
from storage.search_index import SearchRejected, SearchUnavailable
from storage.search_sync import Drift
from web.container import Services, provide_services
from web.settings import Settings

Echo = Callable[[str], None]
EXAMPLES = 5


@dataclass(frozen=True)
class AuditScope:
    # Named users (`--user`): their timelines, counters and newest tweets' documents.
    usernames: tuple[str, ...] = ()
    # Otherwise this many timelines sampled from Redis, and as many documents for the index.
    sample: int = 200
    # Every timeline in Redis, and every id of the index.
    every: bool = False
    # New tweets, follows and deletions younger than this may still be on their way.
    grace_seconds: float = 60.0
    # Each audited user's newest tweets whose counters (and documents) are checked.
    recent: int = 20

    def describe(self, users: int) -> str:
        if self.usernames:
            return f"{users} named user(s)"
        if self.every:
            return f"every timeline in Redis ({users})"
        return f"{users} timeline(s) sampled from Redis (asked for {self.sample})"


class SearchFindings(msgspec.Struct, frozen=True):
    # What was compared: "the users' newest tweets", or the index as `search verify` does.
    scope: str
    checked: int
    collection: str | None
    missing: list[int]
    stale: list[int]
    extra: list[int]
    # Drift that is not about single documents: no alias, schema, counts, unavailable.
    problems: list[str]

    @property
    def drifted(self) -> int:
        return len(self.missing) + len(self.stale) + len(self.extra) + len(self.problems)

    @property
    def clean(self) -> bool:
        return self.drifted == 0


class AuditReport(msgspec.Struct, frozen=True):
    scope: str
    users: list[int]
    # Usernames of the users the findings name.
    names: dict[int, str]
    timelines: TimelineFindings
    counters: CounterFindings
    search: SearchFindings

    @property
    def clean(self) -> bool:
        return self.timelines.clean and self.counters.clean and self.search.clean


class RepairReport(msgspec.Struct, frozen=True):
    timelines: int
    entries_removed: int
    counters: CounterRepair
    documents: int
    # Why the index was not repaired (Typesense unavailable), if it was not.
    search_skipped: str | None = None


class AuditOutcome(msgspec.Struct, frozen=True):
    before: AuditReport
    repair: RepairReport | None = None
    after: AuditReport | None = None

    @property
    def clean(self) -> bool:
        return (self.after or self.before).clean


@dataclass
class _Auditors:
    services: Services
    timelines: TimelineAuditor
    counters: CounterAuditor
    scope: AuditScope


def timeline_auditor(services: Services, *, grace: timedelta) -> TimelineAuditor:
    return TimelineAuditor(
        services.redis,
        services.keys,
        services.store,
        services.timelines,
        services.tweets,
        services.db,
        active_days=services.settings.active_days,
        grace=grace,
    )


def _auditors(services: Services, scope: AuditScope) -> _Auditors:
    settings = services.settings
    return _Auditors(
        services=services,
        timelines=timeline_auditor(services, grace=timedelta(seconds=scope.grace_seconds)),
        counters=CounterAuditor(
            services.db,
            services.reader,
            celebrity_threshold=settings.celebrity_threshold,
            hysteresis=settings.celebrity_hysteresis,
            next_id=services.ids.next_id,
        ),
        scope=scope,
    )


async def run_audit(settings: Settings, scope: AuditScope, *, repair: bool) -> AuditOutcome:
    """Audits; with `repair`, fixes what drifted and audits the same users again. Raises
    LookupError for a named user who does not exist."""
    async with provide_services(settings, process_name="chirp-cli") as services:
        auditors = _auditors(services, scope)
        users = await _users(auditors)
        before, index_drift = await _audit(auditors, users)
        if before.clean or not repair:
            return AuditOutcome(before)
        repaired = await _repair(auditors, before, index_drift)
        after, _ = await _audit(auditors, users, after_repair=True)
        return AuditOutcome(before, repaired, after)


async def _users(auditors: _Auditors) -> list[int]:
    scope = auditors.scope
    if scope.usernames:
        ids: list[int] = []
        for name in scope.usernames:
            user = await auditors.services.users.get_by_username(name)
            if user is None:
                raise LookupError(f"no user named {name!r}")
            ids.append(user.id)
        return list(dict.fromkeys(ids))
    if scope.every:
        return [u async for u in auditors.timelines.timeline_users()]
    return await auditors.timelines.sample_users(scope.sample)


async def _audit(
    auditors: _Auditors, users: Sequence[int], *, after_repair: bool = False
) -> tuple[AuditReport, Drift | None]:
    services, scope = auditors.services, auditors.scope
    timelines = await auditors.timelines.audit(users)
    recent = await auditors.counters.recent_tweets(users, scope.recent)
    counters = await auditors.counters.audit(users, recent)
    index_drift: Drift | None = None
    try:
        if scope.usernames:
            checked = await tweets_to_index_check(services.db, users, scope.recent)
            search = _from_index_drift(
                await audit_index(services.search_sync, services.tweets, checked)
            )
        else:
            # After a repair, as `search verify --repair` does: every id, so nothing is left
            # unchecked that the repair might have missed.
            index_drift = await services.search_sync.verify(
                sample=scope.sample, full=scope.every or after_repair
            )
            search = _from_drift(index_drift, services.settings.search_collection)
    except (SearchUnavailable, SearchRejected) as error:
        search = SearchFindings("-", 0, None, [], [], [], [f"search check failed: {error}"])
    named = {d.user_id for d in timelines.drifted} | {
        d.row_id for d in counters.wrong if d.table == "users"
    }
    authors = await services.users.authors(sorted(named)) if named else {}
    report = AuditReport(
        scope=scope.describe(len(users)),
        users=list(users),
        names={i: a.username for i, a in authors.items()},
        timelines=timelines,
        counters=counters,
        search=search,
    )
    return report, index_drift


def _from_index_drift(drift: IndexDrift) -> SearchFindings:
    return SearchFindings(
        scope="the users' newest tweets",
        checked=drift.checked,
        collection=drift.collection,
        missing=drift.missing,
        stale=drift.stale,
        extra=drift.extra,
        problems=[],
    )


def _from_drift(drift: Drift, alias: str) -> SearchFindings:
    problems: list[str] = []
    if drift.collection is None:
        problems.append(f"no alias {alias!r}: nothing is indexed")
    else:
        problems += [f"schema: {s}" for s in drift.schema]
        if drift.postgres_count != drift.index_count:
            problems.append(
                f"postgres has {drift.postgres_count} live tweets,"
                f" the index {drift.index_count} documents"
            )
    return SearchFindings(
        scope="every id" if drift.full else "sampled from both sides",
        checked=drift.sampled,
        collection=drift.collection,
        missing=drift.missing,
        stale=drift.stale,
        extra=drift.extra,
        problems=problems,
    )


async def _repair(auditors: _Auditors, report: AuditReport, drift: Drift | None) -> RepairReport:
    services = auditors.services
    timelines = await auditors.timelines.repair(report.timelines.drifted)
    counters = await auditors.counters.repair(report.counters.wrong)
    if counters.mode_changes:
        # The web processes' cached follow-list splits go stale now, not only once the
        # worker has handled the FanoutModeChanged from the outbox.
        with contextlib.suppress(*REDIS_ERRORS):
            await services.store.bump_celebrity_version()
    documents = 0
    skipped: str | None = None
    search = report.search
    try:
        if drift is not None and not search.clean:
            documents = await services.search_sync.repair(drift)
        elif drift is None and (search.missing or search.stale or search.extra):
            ids = [*search.missing, *search.stale, *search.extra]
            rejected = await services.search_sync.sync(ids)
            documents = len(ids) - len(rejected)
    except (SearchUnavailable, SearchRejected) as error:
        skipped = str(error)
    return RepairReport(
        timelines=timelines,
        entries_removed=report.timelines.extra,
        counters=counters,
        documents=documents,
        search_skipped=skipped,
    )


# -- output -------------------------------------------------------------------------------


def _user(report: AuditReport, user_id: int) -> str:
    name = report.names.get(user_id)
    return f"@{name}" if name else f"user {user_id}"


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:EXAMPLES])
    return shown + (f" … ({len(ids)})" if len(ids) > EXAMPLES else "")


def describe_report(report: AuditReport) -> list[str]:
    t, c, s = report.timelines, report.counters, report.search
    rows = [
        (
            "timelines",
            t.audited,
            len(t.drifted),
            f"missing {t.missing}, extra {t.extra}, incomplete {t.incomplete};"
            f" {len(t.without_timeline)} without a timeline (rebuilt on read)",
        ),
        (
            "counters",
            c.users + c.tweets,
            len(c.wrong),
            f"{c.users} users and {c.tweets} tweets recounted",
        ),
        (
            "search",
            s.checked,
            s.drifted,
            f"missing {len(s.missing)}, stale {len(s.stale)}, extra {len(s.extra)} ({s.scope})",
        ),
    ]
    lines = [f"scope:      {report.scope}", f"{'CHECK':<11}{'AUDITED':>8}{'DRIFTED':>9}  DETAIL"]
    lines += [
        f"{name:<11}{audited:>8}{drifted:>9}  {detail}" for name, audited, drifted, detail in rows
    ]
    examples = _examples(report)
    if examples:
        lines.append("examples:")
        lines += [f"  {line}" for line in examples]
    return lines


def _examples(report: AuditReport) -> list[str]:
    lines: list[str] = []
    drifted = report.timelines.drifted
    for drift in [d for d in drifted if d.missing][:EXAMPLES]:
        lines.append(
            f"missing     {_user(report, drift.user_id)}: {_ids(drift.missing)} ({drift.key})"
        )
    for drift in [d for d in drifted if d.extra and not d.orphan][:EXAMPLES]:
        shown = "; ".join(f"{e.tweet_id} ({e.reason})" for e in drift.extra[:EXAMPLES])
        more = f" … ({len(drift.extra)})" if len(drift.extra) > EXAMPLES else ""
        lines.append(f"extra       {_user(report, drift.user_id)}: {shown}{more}")
    for drift in [d for d in drifted if not d.complete and not d.orphan][:EXAMPLES]:
        lines.append(
            f"incomplete  {_user(report, drift.user_id)}: {drift.key} has no sentinel"
            f" ({drift.size} entries, no expiry; read as missing)"
        )
    for drift in [d for d in drifted if d.orphan][:EXAMPLES]:
        lines.append(f"orphan      {drift.key}: no such user ({drift.size} entries)")
    for wrong in report.counters.wrong[: EXAMPLES * 2]:
        row = _user(report, wrong.row_id) if wrong.table == "users" else f"tweet {wrong.row_id}"
        lines.append(f"counter     {row} {wrong.column} {wrong.stored}, recount {wrong.recount}")
    search = report.search
    for kind, ids in (
        ("missing", search.missing),
        ("stale", search.stale),
        ("extra", search.extra),
    ):
        if ids:
            lines.append(f"search      {kind} {_ids(ids)}")
    lines += [f"search      {problem}" for problem in search.problems]
    return lines


def describe_repair(repair: RepairReport, report: AuditReport) -> str:
    modes = ", ".join(_user(report, u) for u in repair.counters.mode_changes)
    search = (
        f"search not repaired ({repair.search_skipped})"
        if repair.search_skipped
        else f"{repair.documents} search document(s) rewritten or removed"
    )
    return (
        f"repair:     {repair.timelines} timeline(s) fixed ({repair.entries_removed} entries"
        " removed, then merged with a rebuild from Postgres);"
        f" {repair.counters.users + repair.counters.tweets} counter row(s) set to the recount"
        + (f" (celebrity mode changed: {modes})" if modes else "")
        + f"; {search}"
    )


def describe_outcome(outcome: AuditOutcome) -> list[str]:
    lines = describe_report(outcome.before)
    if outcome.repair is None:
        lines.append(
            "result:     clean"
            if outcome.clean
            else "result:     drift found; `chirp audit --repair` fixes it"
        )
        return lines
    lines.append(describe_repair(outcome.repair, outcome.before))
    assert outcome.after is not None
    lines.append("after repair:")
    lines += describe_report(outcome.after)
    lines.append(
        "result:     clean after repair"
        if outcome.clean
        else "result:     drift remains (writes during the audit?); run it again"
    )
    return lines


def outcome_json(outcome: AuditOutcome) -> str:
    """Ids as strings (64-bit ids do not survive JSON numbers in JavaScript)."""
    body: dict[str, Any] = {
        "clean": outcome.clean,
        "before": _report_json(outcome.before),
        "repair": None,
        "after": None,
    }
    if outcome.repair is not None:
        repair = outcome.repair
        body["repair"] = {
            "timelines": repair.timelines,
            "entries_removed": repair.entries_removed,
            "counter_users": repair.counters.users,
            "counter_tweets": repair.counters.tweets,
            "mode_changes": [str(u) for u in repair.counters.mode_changes],
            "documents": repair.documents,
            "search_skipped": repair.search_skipped,
        }
    if outcome.after is not None:
        body["after"] = _report_json(outcome.after)
    return msgspec.json.encode(body).decode()


def _strs(ids: Sequence[int]) -> list[str]:
    return [str(i) for i in ids]


def _timeline_json(report: AuditReport, drift: TimelineDrift) -> dict[str, Any]:
    return {
        "user_id": str(drift.user_id),
        "username": report.names.get(drift.user_id),
        "key": drift.key,
        "size": drift.size,
        "complete": drift.complete,
        "full": drift.full,
        "active": drift.active,
        "orphan": drift.orphan,
        "missing": _strs(drift.missing),
        "extra": [{"tweet_id": str(e.tweet_id), "reason": e.reason} for e in drift.extra],
    }


def _report_json(report: AuditReport) -> dict[str, Any]:
    t, c, s = report.timelines, report.counters, report.search
    return {
        "clean": report.clean,
        "scope": report.scope,
        "timelines": {
            "audited": t.audited,
            "drifted": len(t.drifted),
            "missing": t.missing,
            "extra": t.extra,
            "incomplete": t.incomplete,
            "without_timeline": _strs(t.without_timeline),
            "drift": [_timeline_json(report, d) for d in t.drifted],
        },
        "counters": {
            "users": c.users,
            "tweets": c.tweets,
            "wrong": [
                {
                    "table": w.table,
                    "id": str(w.row_id),
                    "column": w.column,
                    "stored": w.stored,
                    "recount": w.recount,
                }
                for w in c.wrong
            ],
        },
        "search": {
            "scope": s.scope,
            "checked": s.checked,
            "collection": s.collection,
            "missing": _strs(s.missing),
            "stale": _strs(s.stale),
            "extra": _strs(s.extra),
            "problems": s.problems,
        },
    }
