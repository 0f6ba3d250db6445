"""What every handler is given: settings, the audit trail, and the band
service, built lazily once per process.

The compute adapter (and with it ``google.cloud.compute_v1``, ~3 s and
~150 MB) is created only when a handler first needs the band, so messages
that change nothing (filtered, duplicate, malformed) never pay for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from config import settings as config
from handlers.envelope import Message, from_cloud_event
from responder.audit import Audit
from responder.errors import BadEvent
from responder.guards import FloodBreaker
from responder.service import LIFTS, Budget, EventRef, PolicyApi, Responder, Trail, delivery, utcnow

if TYPE_CHECKING:
    from responder.groupstore import GroupStore

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        settings: config.Settings,
        audit: Audit,
        *,
        api_factory: Callable[[config.Settings], PolicyApi] | None = None,
        clock: Callable[[], datetime] = utcnow,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        # The process environment, for the values of feed pulls' request
        # headers (config names the variables, never the secrets).
        self.environ: Mapping[str, str] = dict(environ or {})
        # Per-feed validators of the last pull this instance saw (handlers/feed_pull.py).
        self.feed_memory: dict[str, Any] = {}
        self.audit = audit
        self.clock = clock
        self._api_factory = api_factory or _compute_api
        # The requests an instance serves at once (gen2 concurrency > 1) share
        # one adapter and one responder: the first to need one builds it, the
        # others wait for it (functools.cached_property does not lock on 3.12).
        self._lock = threading.Lock()
        self._api: PolicyApi | None = None
        self._responder: Responder | None = None
        self._group_store: GroupStore | None = None
        # The other targets' adapters and responders (the default target's
        # are the slots above), built on first use like them.
        self._others: dict[str, tuple[PolicyApi, Responder]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.breaker = FloodBreaker()

    @property
    def targets(self) -> tuple[str, ...]:
        """The names of the configured targets, the default one first."""
        return self.settings.target_names

    def responder_for(self, name: str) -> Responder:
        """The band service of one target (``KeyError`` for an unknown name)."""
        if name == self.settings.default_target:
            return self.responder
        built = self._others.get(name)
        if built is None:
            settings = self.settings.for_target(name)
            with self._lock:
                built = self._others.get(name)
                if built is None:
                    api = self._api_factory(settings)
                    built = (api, Responder(settings, api, self._audit_for(name), clock=self.clock,
                                            trail=self._trail(name)))
                    self._others[name] = built
        return built[1]

    def api_for(self, name: str) -> PolicyApi:
        if name == self.settings.default_target:
            return self.api
        self.responder_for(name)
        return self._others[name][0]

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The small pool that runs one event's targets at once."""
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=min(32, 4 * len(self.targets)),
                                                    thread_name_prefix="target")
                pool = self._pool
        return pool

    def _audit_for(self, name: str) -> Audit:
        """Records name their target when ``[[targets]]`` is configured."""
        return self.audit if not self.settings.targets else self.audit.bound(target=name)

    @property
    def api(self) -> PolicyApi:
        api = self._api
        if api is None:
            with self._lock:
                if self._api is None:
                    self._api = self._api_factory(self.settings)
                api = self._api
        return api

    @property
    def responder(self) -> Responder:
        responder = self._responder
        if responder is None:
            api = self.api
            with self._lock:
                if self._responder is None:
                    self._responder = Responder(self.settings, api, self._audit_for(self.settings.default_target),
                                                clock=self.clock, trail=self._trail(self.settings.default_target))
                responder = self._responder
        return responder

    def _trail(self, name: str) -> Trail | None:
        """Where the cleanup reads the audit trail to tell a wipe from its own
        removals: the local audit file, else Cloud Logging (against Google).
        With several targets, only the records of target ``name`` (and, for
        the default target, records that name none)."""
        from responder import audit as records

        if self.audit.file is not None:
            trail = records.file_trail(self.audit.file)
        elif self.settings.policy.api_endpoint:
            return None
        else:
            trail = records.cloud_trail(self.settings.policy.project, ("usage", *LIFTS))
        if not self.settings.targets:
            return trail
        mine = (None, name) if name == self.settings.default_target else (name,)

        def read(since: datetime) -> list[dict[str, Any]]:
            return [r for r in trail(since) if r.get("target") in mine]

        return read

    @property
    def group_store(self) -> GroupStore:
        """Feeds stored in address groups; the group adapter (and the
        network-security client) is built on its first call. Imported here:
        a delivery that touches no group never loads them. Built once, under
        the lock, like the adapter and the responder."""
        from responder.groups import AddressGroups
        from responder.groupstore import GroupStore

        store = self._group_store
        if store is None:
            api, holder = self.api, self.responder.holder
            with self._lock:
                if self._group_store is None:
                    def groups() -> AddressGroups:
                        s = self.settings
                        return AddressGroups(s.policy, s.groups, retry_deadline=s.policy.retry_deadline)

                    self._group_store = GroupStore(self.settings, api, groups, self.audit, clock=self.clock,
                                                   holder=holder)
                store = self._group_store
        return store

    @property
    def uses_groups(self) -> bool:
        """Whether any configured feed may be stored in an address group."""
        return any(f.store != "band" for f in self.settings.feeds.values())


def _compute_api(settings: config.Settings) -> PolicyApi:
    from responder.compute import CloudArmor

    return CloudArmor(settings.policy, retry_deadline=settings.policy.retry_deadline)


_runtime: Runtime | None = None


def configure(environ: dict[str, str] | None = None) -> Runtime:
    """Loads and validates the configuration (raising ConfigError naming the
    field) and sets up structured logging; called when main.py is imported,
    so that a bad configuration stops the function at start."""
    global _runtime
    from responder.audit import setup_logging

    env = dict(os.environ if environ is None else environ)
    settings = load_settings(environ=env)
    setup_logging()
    _runtime = Runtime(settings, Audit(file=env.get("RESPONDER_AUDIT_FILE") or None), environ=env)
    return _runtime


def load_settings(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> config.Settings:
    """The settings, validated whole: ``config.load`` and the detector file
    it names (``handlers.detectors``), so that either stops the caller at
    start with a ConfigError naming the field."""
    from handlers import detectors

    settings = config.load(path, environ=environ)
    detectors.load(settings.detectors)
    return settings


def current() -> Runtime:
    return _runtime if _runtime is not None else configure()


def dispatch(kind: str, handler: Callable[[Message, Runtime], Any], event: Any, rt: Runtime | None = None) -> Any:
    """Runs one handler on one CloudEvent.

    A malformed or unsupported message is recorded once ("rejected") and
    acknowledged by returning normally. Every other failure propagates, so
    that Pub/Sub redelivers the message (and finally dead-letters it): a
    transient cloud failure, a missing policy or permission, or a bug.
    """
    rt = rt or current()
    message_id = ""
    message: Message | None = None
    s = rt.settings
    token = delivery.set(Budget(s.function_timeout, s.policy.mutation_bound + s.lease.margin))
    try:
        message = from_cloud_event(event)
        message_id = message.message_id
        return handler(message, rt)
    except BadEvent as exc:
        rt.audit.record(
            "rejected", f"{kind} message {message_id or '(no id)'} rejected: {exc}",
            level=logging.ERROR, message_id=message_id or None, source=kind, error=str(exc),
        )
        return None
    except Exception as exc:
        if message is not None:
            _report_last_delivery(rt, kind, message, exc)
        raise
    finally:
        delivery.reset(token)


def _report_last_delivery(rt: Runtime, kind: str, message: Message, exc: Exception) -> None:
    """A message that fails on its last allowed delivery goes to the
    dead-letter topic: say so plainly, once, with what it still needed."""
    limit = rt.settings.max_delivery_attempts
    if message.delivery_attempt < limit:
        return
    rt.audit.record(
        "dead-lettered", f"{kind} message {message.message_id} failed on delivery {message.delivery_attempt} "
        f"(deploy.max_delivery_attempts = {limit}): it goes to the dead-letter topic; replay it once the cause "
        f"is fixed. Last error: {type(exc).__name__}: {exc}",
        level=logging.ERROR, message_id=message.message_id, source=kind, delivery_attempt=message.delivery_attempt,
        error=f"{type(exc).__name__}: {exc}",
    )


def event_ref(message: Message, source: str, actor: str = "", reason: str = "") -> EventRef:
    return EventRef(message_id=message.message_id, source=source, actor=actor, reason=reason)
