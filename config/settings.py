"""Typed, validated settings of the responder.

One TOML file (``config/responder.toml`` by default, or the path in
``RESPONDER_CONFIG``) holds every setting; a few deployment values can be
overridden from the environment (see ``ENV_OVERRIDES``) so that the same code
talks to the local Cloud Armor API or to Google.

``load()`` is called once, at the edge (the entry points, the CLI, the run
script); the rest of the code receives a ``Settings`` object and never reads
the environment. Any invalid value raises ``ConfigError`` naming the field,
e.g. ``band.end: must be greater than band.start (20000)``.

This module uses the standard library only and imports nothing of the
product: it is the bottom layer. The detector file that ``[detectors]`` names
is read and validated by ``handlers.detectors`` (it needs the log formats),
called at the edge right after ``load`` (``handlers.runtime.load_settings``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_PATH = CONFIG_DIR / "responder.toml"

# Highest priority a rule may use; 2147483647 is the default rule.
MAX_RULE_PRIORITY = 2147483646
DENY_ACTIONS = ("deny(403)", "deny(404)", "deny(502)")
SEVERITIES = ("low", "medium", "high", "critical")
SOURCE_KINDS = ("manual", "feed", "log", "alert")
FEED_STORES = ("band", "address-group", "auto")
FEED_FORMATS = ("auto", "json", "spamhaus", "netset", "plain", "tor", "stix", "misp")

# Environment variable -> dotted setting. Values are parsed like the file's.
ENV_OVERRIDES: Mapping[str, str] = {
    "RESPONDER_PROJECT": "policy.project",
    "RESPONDER_POLICY": "policy.name",
    "RESPONDER_REGION": "policy.region",
    "RESPONDER_API_ENDPOINT": "policy.api_endpoint",
    "RESPONDER_BAND_START": "band.start",
    "RESPONDER_BAND_END": "band.end",
    "RESPONDER_VALIDATE_ONLY": "band.validate_only",
    "RESPONDER_PREVIEW": "band.preview",
    "RESPONDER_RETRY_DEADLINE": "policy.retry_deadline",
    "RESPONDER_FUNCTION_TIMEOUT": "deploy.timeout",
}

# Matched with fullmatch only: "$" also matches before a final newline.
_DURATION = re.compile(r"\s*(\d+)\s*([smhd])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"[a-z][a-z0-9-]{0,15}")
_TAG = re.compile(r"[a-z][a-z0-9]{1,7}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
DEFAULT_PULL_MAX_BYTES = 10 * 1024 * 1024  # Pub/Sub's message size: a pulled list is no larger than a published one
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
_ENV_REF = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]{0,63})")
_CRON_FIELD = re.compile(r"[A-Za-z0-9*/,-]+")
# Hosts a plain-http feed url may name: the local stack's feed server only.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class ConfigError(ValueError):
    """An invalid setting; the message starts with the setting's dotted name."""


def parse_duration(value: object, where: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like '6h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(int(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    else:
        raise ConfigError(f"{where}: expected a duration like '6h', '15m' or '7d', got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    if seconds > 100 * 365 * 86400:
        raise ConfigError(f"{where}: longer than 100 years, got {value!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class PolicySettings:
    project: str
    name: str
    region: str = ""  # empty: a global policy
    api_endpoint: str = ""  # empty: Google's endpoint
    request_timeout: timedelta = timedelta(seconds=20)
    operation_timeout: timedelta = timedelta(seconds=60)
    retry_deadline: timedelta = timedelta(seconds=60)  # retrying transient failures, then raise
    read_cache: timedelta = timedelta(seconds=5)  # how old a policy read an event writer may reuse

    @property
    def mutation_bound(self) -> timedelta:
        """The longest one mutation attempt can take from its send to its
        commit, under the stated assumption (README, "Concurrency") that an
        operation the API accepted is DONE within ``operation_timeout``."""
        return self.request_timeout + self.operation_timeout


@dataclass(frozen=True)
class BandSettings:
    start: int
    end: int
    owner_tag: str = "car1"
    expiry_granularity: timedelta = timedelta(minutes=15)
    validate_only: bool = False
    preview: bool = False
    max_rules: int = 0  # most band rules the project's quota leaves room for; 0: the band's size

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class LeaseSettings:
    """The policy label used as a lease by the one writer that may patch or
    remove band rules (see README, 'Concurrency')."""

    label: str = "car-lease"
    duration: timedelta = timedelta(seconds=240)
    wait: timedelta = timedelta(seconds=60)
    mode_label: str = "car-mode"  # "preview" while the break-glass switch is on
    band_label: str = "car-band"  # what the band held at the last cleanup (responder.service.BandMark)
    # Allowance for a process pause between a check and the send it guards,
    # and for clock skew between instances.
    margin: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class SourceSettings:
    """Defaults for one kind of source (manual, feed, log, alert)."""

    default_ttl: timedelta
    max_ttl: timedelta
    action: str = "deny(403)"
    severity: str = "medium"
    min_prefix_v4: int = 32
    min_prefix_v6: int = 64
    widen_v6_to: int | None = None  # single IPv6 hosts become this prefix
    allow_permanent: bool = False
    validate_only: bool = False  # dry run for this kind of source only
    preview: bool = False  # this kind's new rules are committed with preview: true
    flood_limit: int = 0  # new ranges per flood_window and instance before the breaker trips; 0: off
    flood_window: timedelta = timedelta(minutes=10)
    on_flood: str = "preview"  # "preview": new rules go to preview; "refuse": refused
    # Repeat offenders: each later sighting of a network the band still holds
    # multiplies this kind's TTL by this factor (capped at max_ttl); 1: off.
    escalate: float = 1.0
    # Bans that follow traffic: a request one of our band rules denied (the
    # load balancer's request log) extends the entry by this kind's TTL from
    # the request's time, capped by max_ttl. Never for manual blocks.
    follow_denies: bool = False
    # The targets (``[[targets]]`` names) this kind's events apply to; empty: all.
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedSettings:
    """Per-feed settings; unset values fall back to ``sources.feed``."""

    name: str
    format: str = "auto"
    ttl: timedelta | None = None
    action: str | None = None
    severity: str | None = None
    min_confidence: int = 0
    max_entries: int = 100_000
    snapshot: bool = False
    max_drop_share: float = 0.5
    # Scheduled pulls (handlers/feed_pull.py): where the list is downloaded
    # from, how often (a cron schedule, for Cloud Scheduler), and the limits.
    url: str = ""  # empty: the feed is only published to the topic
    every: str = ""  # cron schedule; set (default hourly) when url is
    max_bytes: int = DEFAULT_PULL_MAX_BYTES
    timeout: timedelta = timedelta(seconds=30)  # read timeout, and the whole download's deadline
    connect_timeout: timedelta = timedelta(seconds=10)
    # Request header -> the environment variable holding its value (never the value).
    headers: Mapping[str, str] = field(default_factory=dict)
    # Where a snapshot feed's list lives: "band" (range rules), "address-group"
    # (one Cloud Armor Enterprise group per IP version and one rule each), or
    # "auto" (a group once the list needs more than groups.auto_rules band rules).
    store: str = "band"
    # The targets this feed's lists apply to (within [sources.feed] targets); empty: all.
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardSettings:
    allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_ranges_per_event: int = 20_000


@dataclass(frozen=True)
class DetectorSettings:
    """``[detectors]``: where the log detectors come from (see
    ``config/detectors.toml``) and the threshold counter's bound."""

    file: Path = CONFIG_DIR / "detectors.toml"
    lists_dir: Path = CONFIG_DIR  # "@name" in url_paths -> <lists_dir>/<name>.txt
    enable: tuple[str, ...] = ()  # turn on detectors the file disables
    disable: tuple[str, ...] = ()  # turn off detectors the file enables
    max_tracked: int = 100_000  # (detector, address) keys the threshold counter keeps


CLOSE_ACTIONS = ("keep", "shorten", "lift")


@dataclass(frozen=True)
class MonitoringAlertSettings:
    """``[alerts.monitoring]``: Cloud Monitoring incidents."""

    label_keys: tuple[str, ...] = ("client_ip", "remote_ip", "source_ip")
    ttl: timedelta | None = None  # None: sources.alert.default_ttl
    severity: str | None = None  # None: sources.alert.severity
    on_close: str = "keep"  # keep | shorten | lift
    close_ttl: timedelta = timedelta(minutes=15)  # on_close = "shorten": block until close + this


_SCC_TTLS: Mapping[str, timedelta] = {
    "low": timedelta(hours=1), "medium": timedelta(hours=6),
    "high": timedelta(hours=24), "critical": timedelta(hours=72),
}


@dataclass(frozen=True)
class SccAlertSettings:
    """``[alerts.scc]``: Security Command Center finding notifications."""

    ttl_by_severity: Mapping[str, timedelta] = field(default_factory=lambda: dict(_SCC_TTLS))
    categories: tuple[str, ...] = ()  # allow-list of finding categories; empty: all
    on_inactive: str = "lift"  # lift | keep
    muted: str = "ignore"  # ignore | apply


@dataclass(frozen=True)
class AlertSettings:
    monitoring: MonitoringAlertSettings = field(default_factory=MonitoringAlertSettings)
    scc: SccAlertSettings = field(default_factory=SccAlertSettings)


#: Most items an address group with purpose CLOUD_ARMOR may hold: not
#: confirmed by Google (a third-party tool reports 150,000).
GROUPS_MAX_CAPACITY = 150_000


@dataclass(frozen=True)
class GroupSettings:
    """Cloud Armor Enterprise address groups (``[groups]``; responder/groups.py).

    Google documents neither the maximum capacity of a CLOUD_ARMOR group nor
    the most items one addItems/removeItems call may carry: both are
    settings with conservative defaults."""

    prefix: str = "car-"  # every group the responder owns starts with this
    location: str = "global"  # Cloud Armor uses only global groups
    capacity_headroom: float = 0.25  # a new group's capacity: items x (1 + headroom)
    min_capacity: int = 100
    max_capacity: int = 100_000  # not documented by Google: conservative default
    max_items_per_call: int = 500  # not documented by Google: conservative default
    api_endpoint: str = ""  # empty: policy.api_endpoint if set (a local API), else Google's
    # A feed with store = "auto" goes to a group once its list needs more band rules than this.
    auto_rules: int = 20

    def capacity_for(self, items: int) -> int:
        """The capacity of a new group meant to hold ``items`` items: the
        headroom added, at least ``min_capacity``, at most ``max_capacity``."""
        import math

        wanted = max(self.min_capacity, math.ceil(items * (1 + self.capacity_headroom)))
        return min(wanted, self.max_capacity)


DEFAULT_TARGET = "default"


@dataclass(frozen=True)
class TargetSettings:
    """One policy whose band the deployment owns (``[[targets]]``; the
    ``[policy]`` + ``[band]`` pair is the target named ``default``). What a
    target does not set is shared: ``[policy]``'s endpoint and timeouts,
    ``[band]``'s owner tag, granularity and modes, ``[lease]``'s timings."""

    name: str
    project: str
    policy: str
    region: str = ""
    band_start: int = 0
    band_end: int = 0
    max_rules: int = 0  # 0: the band's size
    lease_label: str = ""  # "": lease.label (each policy has its own labels)


@dataclass(frozen=True)
class Settings:
    policy: PolicySettings
    band: BandSettings
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    sources: Mapping[str, SourceSettings] = field(default_factory=dict)
    feeds: Mapping[str, FeedSettings] = field(default_factory=dict)
    guards: GuardSettings = field(default_factory=GuardSettings)
    detectors: DetectorSettings = field(default_factory=DetectorSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    # The function's timeout (deploy.timeout, which deploy.sh passes to
    # ``gcloud functions deploy --timeout``): the time budget of one delivery.
    function_timeout: timedelta = timedelta(seconds=540)
    # Deliveries before Pub/Sub dead-letters a message (deploy.max_delivery_attempts).
    max_delivery_attempts: int = 5
    groups: GroupSettings = field(default_factory=GroupSettings)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Every target, the default (first) one first. Empty: the one target
    # that ``policy``, ``band`` and ``lease`` describe, named "default".
    targets: tuple[TargetSettings, ...] = ()

    def source(self, kind: str) -> SourceSettings:
        return self.sources[kind]

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets) or (DEFAULT_TARGET,)

    @property
    def default_target(self) -> str:
        return self.target_names[0]

    def for_target(self, name: str) -> Settings:
        """These settings as one target sees them: its policy, band and
        lease in ``policy``, ``band`` and ``lease``. The first target is
        the one they already describe (returned as is)."""
        if name == self.default_target:
            return self
        for t in self.targets:
            if t.name == name:
                return replace(
                    self,
                    policy=replace(self.policy, project=t.project, name=t.policy, region=t.region),
                    band=replace(self.band, start=t.band_start, end=t.band_end, max_rules=t.max_rules),
                    lease=replace(self.lease, label=t.lease_label or self.lease.label),
                )
        raise KeyError(name)

    def only(self, name: str) -> Settings:
        """These settings narrowed to one target, as its default (the CLI's
        ``--target``); records still name it when ``[[targets]]`` is used."""
        narrowed = self.for_target(name)
        return replace(narrowed, targets=tuple(t for t in self.targets if t.name == name))

    def feed(self, name: str) -> FeedSettings:
        """A configured feed, or an unconfigured one with the defaults."""
        return self.feeds.get(name) or FeedSettings(name=name)

    def with_policy(self, **changes: Any) -> Settings:
        return replace(self, policy=replace(self.policy, **changes))


_SOURCE_DEFAULTS: Mapping[str, SourceSettings] = {
    "manual": SourceSettings(
        default_ttl=timedelta(hours=24), max_ttl=timedelta(days=365), severity="high",
        min_prefix_v4=16, min_prefix_v6=48, allow_permanent=True,
    ),
    "feed": SourceSettings(
        default_ttl=timedelta(hours=24), max_ttl=timedelta(days=30), severity="medium",
        min_prefix_v4=12, min_prefix_v6=32,
    ),
    "log": SourceSettings(
        default_ttl=timedelta(hours=1), max_ttl=timedelta(days=7), severity="medium",
        min_prefix_v4=32, min_prefix_v6=64, widen_v6_to=64, escalate=2.0, follow_denies=True,
    ),
    "alert": SourceSettings(
        default_ttl=timedelta(hours=6), max_ttl=timedelta(days=7), severity="high",
        min_prefix_v4=32, min_prefix_v6=64, widen_v6_to=64, escalate=2.0, follow_denies=True,
    ),
}


class _Reader:
    """Reads one table of the TOML document, naming fields in errors."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
        self.table = table
        self.where = where
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.table

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise ConfigError(f"{self._name(key)}: required")
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(f"{self._name(key)}: expected {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise ConfigError(f"{self._name(key)}: expected {_kind_name(kind)}, got {value!r}")
        return value

    def duration(self, key: str, default: timedelta | None = None) -> timedelta | None:
        self.used.add(key)
        if key not in self.table:
            return default
        return parse_duration(self.table[key], self._name(key))

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> Any:
        value = self.get(key, str, default)
        if value is not None and value not in choices:
            raise ConfigError(f"{self._name(key)}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    def prefix(self, key: str, bits: int, default: int) -> int:
        value = self.get(key, int, default)
        if not 0 <= value <= bits:
            raise ConfigError(f"{self._name(key)}: must be between 0 and {bits}, got {value}")
        return int(value)

    def sub(self, key: str) -> _Reader:
        self.used.add(key)
        return _Reader(self.table.get(key, {}), self._name(key))

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(f"{self._name(unknown[0])}: unknown setting")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _network(text: object, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected an address or CIDR string, got {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{where}: not an IP address or CIDR: {text!r}") from None


def _optional_duration(r: _Reader, key: str, default: timedelta) -> timedelta:
    """A duration that may also be 0 (off)."""
    if r.table.get(key) in (0, "0", "0s"):
        r.used.add(key)
        return timedelta(0)
    value = r.duration(key, default)
    assert value is not None
    return value


def _policy(r: _Reader) -> PolicySettings:
    project = r.get("project", str)
    name = r.get("name", str)
    if not project:
        raise ConfigError("policy.project: required")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise ConfigError(f"policy.name: not a valid resource name: {name!r}")
    endpoint = r.get("api_endpoint", str, "")
    if endpoint and not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
        raise ConfigError(f"policy.api_endpoint: expected http(s)://host[:port], got {endpoint!r}")
    policy = PolicySettings(
        project=project,
        name=name,
        region=r.get("region", str, ""),
        api_endpoint=endpoint.rstrip("/"),
        request_timeout=r.duration("request_timeout", timedelta(seconds=20)),  # type: ignore[arg-type]
        operation_timeout=r.duration("operation_timeout", timedelta(seconds=60)),  # type: ignore[arg-type]
        retry_deadline=r.duration("retry_deadline", timedelta(seconds=60)),  # type: ignore[arg-type]
        read_cache=_optional_duration(r, "read_cache", timedelta(seconds=5)),
    )
    r.done()
    return policy


def _groups(r: _Reader) -> GroupSettings:
    prefix = r.get("prefix", str, "car-")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,19}", prefix):
        raise ConfigError(f"groups.prefix: 1 to 20 lowercase letters, digits or hyphens, "
                          f"starting with a letter, got {prefix!r}")
    location = r.get("location", str, "global")
    if location != "global":
        raise ConfigError(f"groups.location: Cloud Armor uses only global address groups, "
                          f"got {location!r}")
    headroom = r.get("capacity_headroom", (int, float), 0.25)
    if not 0 <= headroom <= 10:
        raise ConfigError(f"groups.capacity_headroom: must be between 0 and 10, got {headroom}")
    max_capacity = r.get("max_capacity", int, 100_000)
    if not 1 <= max_capacity <= GROUPS_MAX_CAPACITY:
        raise ConfigError(f"groups.max_capacity: must be between 1 and {GROUPS_MAX_CAPACITY}, "
                          f"got {max_capacity}")
    min_capacity = r.get("min_capacity", int, 100)
    if not 1 <= min_capacity <= max_capacity:
        raise ConfigError(f"groups.min_capacity: must be between 1 and groups.max_capacity "
                          f"({max_capacity}), got {min_capacity}")
    per_call = r.get("max_items_per_call", int, 500)
    if not 1 <= per_call <= 10_000:
        raise ConfigError(f"groups.max_items_per_call: must be between 1 and 10000, got {per_call}")
    endpoint = r.get("api_endpoint", str, "")
    if endpoint and not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
        raise ConfigError(f"groups.api_endpoint: expected http(s)://host[:port], got {endpoint!r}")
    auto_rules = r.get("auto_rules", int, 20)
    if not 1 <= auto_rules <= 1000:
        raise ConfigError(f"groups.auto_rules: must be between 1 and 1000, got {auto_rules}")
    groups = GroupSettings(prefix=prefix, location=location, capacity_headroom=float(headroom),
                           min_capacity=min_capacity, max_capacity=max_capacity,
                           max_items_per_call=per_call, api_endpoint=endpoint.rstrip("/"),
                           auto_rules=auto_rules)
    r.done()
    return groups


def _band(r: _Reader) -> BandSettings:
    start = r.get("start", int)
    end = r.get("end", int)
    if not 0 <= start <= MAX_RULE_PRIORITY:
        raise ConfigError(f"band.start: must be between 0 and {MAX_RULE_PRIORITY}, got {start}")
    if not start < end <= MAX_RULE_PRIORITY:
        raise ConfigError(f"band.end: must be greater than band.start ({start}) and at most {MAX_RULE_PRIORITY}, got {end}")
    tag = r.get("owner_tag", str, "car1")
    if not _TAG.fullmatch(tag):
        raise ConfigError(f"band.owner_tag: 2 to 8 lowercase letters or digits, starting with a letter, got {tag!r}")
    granularity = r.duration("expiry_granularity", timedelta(minutes=15))
    assert granularity is not None
    if granularity < timedelta(minutes=1) or granularity.total_seconds() % 60:
        raise ConfigError("band.expiry_granularity: must be a whole number of minutes, at least 1m")
    band = BandSettings(
        start=start, end=end, owner_tag=tag, expiry_granularity=granularity,
        validate_only=r.get("validate_only", bool, False), preview=r.get("preview", bool, False),
        max_rules=r.get("max_rules", int, 0),
    )
    if not 0 <= band.max_rules:
        raise ConfigError(f"band.max_rules: must be 0 (the band's size) or positive, got {band.max_rules}")
    r.done()
    return band


def _lease(r: _Reader) -> LeaseSettings:
    label = r.get("label", str, "car-lease")
    if not _LABEL_KEY.fullmatch(label):
        raise ConfigError(f"lease.label: not a valid label key: {label!r}")
    mode_label = r.get("mode_label", str, "car-mode")
    if not _LABEL_KEY.fullmatch(mode_label) or mode_label == label:
        raise ConfigError(f"lease.mode_label: not a valid label key, or the same as lease.label: {mode_label!r}")
    band_label = r.get("band_label", str, "car-band")
    if not _LABEL_KEY.fullmatch(band_label) or band_label in (label, mode_label):
        raise ConfigError(f"lease.band_label: not a valid label key, or the same as another label: {band_label!r}")
    lease = LeaseSettings(
        label=label,
        mode_label=mode_label,
        band_label=band_label,
        duration=r.duration("duration", timedelta(seconds=240)),  # type: ignore[arg-type]
        wait=r.duration("wait", timedelta(seconds=60)),  # type: ignore[arg-type]
        margin=r.duration("margin", timedelta(seconds=10)),  # type: ignore[arg-type]
    )
    r.done()
    return lease


def _source(kind: str, r: _Reader) -> SourceSettings:
    base = _SOURCE_DEFAULTS[kind]
    default_ttl = r.duration("default_ttl", base.default_ttl)
    max_ttl = r.duration("max_ttl", base.max_ttl)
    assert default_ttl is not None and max_ttl is not None
    if default_ttl > max_ttl:
        raise ConfigError(f"sources.{kind}.default_ttl: longer than max_ttl ({max_ttl})")
    widen = r.get("widen_v6_to", int, base.widen_v6_to if base.widen_v6_to is not None else 0) or None
    if widen is not None and not 0 < widen <= 128:
        raise ConfigError(f"sources.{kind}.widen_v6_to: must be between 1 and 128, got {widen}")
    src = SourceSettings(
        default_ttl=default_ttl,
        max_ttl=max_ttl,
        action=r.choice("action", DENY_ACTIONS, base.action),
        severity=r.choice("severity", SEVERITIES, base.severity),
        min_prefix_v4=r.prefix("min_prefix_v4", 32, base.min_prefix_v4),
        min_prefix_v6=r.prefix("min_prefix_v6", 128, base.min_prefix_v6),
        widen_v6_to=widen,
        allow_permanent=r.get("allow_permanent", bool, base.allow_permanent),
        validate_only=r.get("validate_only", bool, False),
        preview=r.get("preview", bool, False),
        flood_limit=r.get("flood_limit", int, 0),
        flood_window=r.duration("flood_window", timedelta(minutes=10)),  # type: ignore[arg-type]
        on_flood=r.choice("on_flood", ("preview", "refuse"), "preview"),
        escalate=float(r.get("escalate", (int, float), base.escalate)),
        follow_denies=r.get("follow_denies", bool, base.follow_denies),
        targets=_names(r, "targets"),
    )
    if not 1 <= src.escalate <= 100:
        raise ConfigError(f"sources.{kind}.escalate: must be between 1 (off) and 100, got {src.escalate}")
    if kind == "manual" and src.escalate != 1:
        raise ConfigError("sources.manual.escalate: manual blocks never escalate (1 or absent)")
    if kind == "manual" and src.follow_denies:
        raise ConfigError("sources.manual.follow_denies: an operator's block never extends by itself "
                          "(false or absent)")
    if src.flood_limit < 0:
        raise ConfigError(f"sources.{kind}.flood_limit: must be 0 (off) or positive, got {src.flood_limit}")
    r.done()
    return src


def schedule_of(every: str, where: str) -> str:
    """A feed's ``every`` as a 5-field cron schedule (what Cloud Scheduler
    takes): a duration that divides an hour or a day (``15m``, ``1h``,
    ``6h``, ``1d``) or a cron string as is."""
    text = every.strip()
    m = _DURATION.fullmatch(text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if unit == "m" and n < 60 and 60 % n == 0:
            return f"*/{n} * * * *" if n > 1 else "* * * * *"
        if unit == "m" and n == 60 or unit == "h" and n == 1:
            return "0 * * * *"
        if unit == "h" and n < 24 and 24 % n == 0:
            return f"0 */{n} * * *"
        if unit == "h" and n == 24 or unit == "d" and n == 1:
            return "0 0 * * *"
        raise ConfigError(f"{where}: {text!r} does not divide an hour or a day; use e.g. 15m, 1h, 6h, 1d or a cron string")
    fields = text.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise ConfigError(f"{where}: expected a schedule like '1h' or a 5-field cron string like '0 * * * *', got {every!r}")
    return " ".join(fields)


def _feed_url(url: str, where: str) -> str:
    """https only (plain http for the local stack's loopback feed server),
    with no credentials in the url: a secret goes in a header from the
    environment."""
    m = re.fullmatch(r"(https?)://([^/?#\s]+)([/?][^\s]*)?", url)
    if not m:
        raise ConfigError(f"{where}: expected an https:// url, got {url!r}")
    scheme, authority = m.group(1), m.group(2)
    if "@" in authority:
        raise ConfigError(f"{where}: credentials in the url are refused; use headers = {{Authorization = \"env:NAME\"}}")
    host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ConfigError(f"{where}: plain http is allowed only for a loopback host (the local feed server); use https")
    return url


def _feed_headers(r: _Reader, name: str) -> dict[str, str]:
    table = r.sub("headers")
    out: dict[str, str] = {}
    for header in list(table.table):
        value = table.get(header, str)
        where = f"feeds.{name}.headers.{header}"
        if not _HEADER_NAME.fullmatch(header):
            raise ConfigError(f"{where}: not a valid header name")
        m = _ENV_REF.fullmatch(value)
        if not m:
            raise ConfigError(f"{where}: only a reference to an environment variable is accepted "
                              f"(\"env:NAME\"), never the value itself")
        out[header] = m.group(1)
    return out


def _feed(name: str, r: _Reader) -> FeedSettings:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"feeds.{name}: feed names are 1 to 16 of a-z, 0-9 and '-', starting with a letter")
    share = r.get("max_drop_share", (int, float), 0.5)
    if not 0 <= share <= 1:
        raise ConfigError(f"feeds.{name}.max_drop_share: must be between 0 and 1, got {share}")
    confidence = r.get("min_confidence", int, 0)
    if not 0 <= confidence <= 100:
        raise ConfigError(f"feeds.{name}.min_confidence: must be between 0 and 100, got {confidence}")
    max_entries = r.get("max_entries", int, 100_000)
    if max_entries < 1:
        raise ConfigError(f"feeds.{name}.max_entries: must be at least 1, got {max_entries}")
    feed = FeedSettings(
        name=name,
        format=r.choice("format", FEED_FORMATS, "auto"),
        ttl=r.duration("ttl"),
        action=r.choice("action", DENY_ACTIONS, None),
        severity=r.choice("severity", SEVERITIES, None),
        min_confidence=confidence,
        max_entries=max_entries,
        snapshot=r.get("snapshot", bool, False),
        max_drop_share=float(share),
        store=r.choice("store", FEED_STORES, "band"),
        targets=_names(r, "targets"),
    )
    if feed.store != "band" and not feed.snapshot:
        raise ConfigError(f"feeds.{name}.store: {feed.store!r} needs snapshot = true (an address group "
                          f"carries no per-item expiry: only a feed's whole list can say what leaves it)")
    url = r.get("url", str, "")
    pull_keys = [k for k in ("every", "max_bytes", "timeout", "connect_timeout", "headers") if r.has(k)]
    if not url:
        if pull_keys:
            raise ConfigError(f"feeds.{name}.{pull_keys[0]}: only for a feed with a url")
        r.done()
        return feed
    max_bytes = r.get("max_bytes", int, DEFAULT_PULL_MAX_BYTES)
    if not 1024 <= max_bytes <= 100 * 1024 * 1024:
        raise ConfigError(f"feeds.{name}.max_bytes: must be between 1024 and 104857600, got {max_bytes}")
    timeout = r.duration("timeout", timedelta(seconds=30))
    connect = r.duration("connect_timeout", timedelta(seconds=10))
    assert timeout is not None and connect is not None
    for key, value in (("timeout", timeout), ("connect_timeout", connect)):
        if value > timedelta(minutes=5):
            raise ConfigError(f"feeds.{name}.{key}: at most 5m (the function must outlive it), got {value}")
    feed = replace(
        feed,
        url=_feed_url(url, f"feeds.{name}.url"),
        every=schedule_of(r.get("every", str, "1h"), f"feeds.{name}.every"),
        max_bytes=max_bytes, timeout=timeout, connect_timeout=connect,
        headers=_feed_headers(r, name),
    )
    r.done()
    return feed


def _guards(r: _Reader) -> GuardSettings:
    allow = r.get("allowlist", list, [])
    guards = GuardSettings(
        allowlist=tuple(_network(v, f"guards.allowlist[{i}]") for i, v in enumerate(allow)),
        max_ranges_per_event=r.get("max_ranges_per_event", int, 20_000),
    )
    if guards.max_ranges_per_event < 1:
        raise ConfigError("guards.max_ranges_per_event: must be at least 1")
    r.done()
    return guards


def _names(r: _Reader, key: str) -> tuple[str, ...]:
    values = r.get(key, list, [])
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{r._name(key)}[{i}]: expected a non-empty string, got {v!r}")
    return tuple(values)


def _path(r: _Reader, key: str, default: Path) -> Path:
    text = r.get(key, str, "")
    if not text:
        return default
    path = Path(text)
    return path if path.is_absolute() else CONFIG_DIR / path


def _detectors(r: _Reader) -> DetectorSettings:
    file = _path(r, "file", CONFIG_DIR / "detectors.toml")
    det = DetectorSettings(
        file=file,
        lists_dir=_path(r, "lists_dir", file.parent),
        enable=_names(r, "enable"),
        disable=_names(r, "disable"),
        max_tracked=r.get("max_tracked", int, 100_000),
    )
    if det.max_tracked < 1:
        raise ConfigError(f"detectors.max_tracked: must be at least 1, got {det.max_tracked}")
    both = sorted(set(det.enable) & set(det.disable))
    if both:
        raise ConfigError(f"detectors.enable: {both[0]!r} is also in detectors.disable")
    r.done()
    return det


def _monitoring(r: _Reader) -> MonitoringAlertSettings:
    keys = _names(r, "label_keys") if r.has("label_keys") else MonitoringAlertSettings.label_keys
    if not keys:
        raise ConfigError("alerts.monitoring.label_keys: must name at least one label key")
    mon = MonitoringAlertSettings(
        label_keys=keys,
        ttl=r.duration("ttl"),
        severity=r.choice("severity", SEVERITIES, None),
        on_close=r.choice("on_close", CLOSE_ACTIONS, "keep"),
        close_ttl=r.duration("close_ttl", timedelta(minutes=15)),  # type: ignore[arg-type]
    )
    r.done()
    return mon


def _scc(r: _Reader) -> SccAlertSettings:
    ttls = dict(_SCC_TTLS)
    table = r.sub("ttl_by_severity")
    for key in list(table.table):
        if key not in SEVERITIES:
            raise ConfigError(f"alerts.scc.ttl_by_severity.{key}: not a severity (one of {', '.join(SEVERITIES)})")
        ttls[key] = table.duration(key)  # type: ignore[assignment]
    scc = SccAlertSettings(
        ttl_by_severity=ttls,
        categories=_names(r, "categories"),
        on_inactive=r.choice("on_inactive", ("lift", "keep"), "lift"),
        muted=r.choice("muted", ("ignore", "apply"), "ignore"),
    )
    r.done()
    return scc


def _alerts(r: _Reader) -> AlertSettings:
    alerts = AlertSettings(monitoring=_monitoring(r.sub("monitoring")), scc=_scc(r.sub("scc")))
    r.done()
    return alerts


def _set_dotted(doc: dict[str, Any], dotted: str, text: str) -> None:
    table_name, key = dotted.split(".")
    table = doc.setdefault(table_name, {})
    current = table.get(key)
    where = f"{dotted} (from the environment)"
    if isinstance(current, bool) or key in ("validate_only", "preview"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{where}: expected true or false, got {text!r}")
        table[key] = text.lower() in ("true", "1", "yes")
    elif isinstance(current, int) or key in ("start", "end"):
        try:
            table[key] = int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    else:
        table[key] = text


def _band_bounds(start: object, end: object, where: str, start_key: str = "start", end_key: str = "end") -> None:
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= MAX_RULE_PRIORITY:
        raise ConfigError(f"{where}.{start_key}: must be an integer between 0 and {MAX_RULE_PRIORITY}, got {start!r}")
    if not isinstance(end, int) or isinstance(end, bool) or not start < end <= MAX_RULE_PRIORITY:
        raise ConfigError(f"{where}.{end_key}: must be an integer greater than {where}.{start_key} ({start}) "
                          f"and at most {MAX_RULE_PRIORITY}, got {end!r}")


def _target(r: _Reader, lease: LeaseSettings) -> TargetSettings:
    where = r.where
    name = r.get("name", str)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: 1 to 16 of a-z, 0-9 and '-', starting with a letter, got {name!r}")
    project = r.get("project", str)
    if not project:
        raise ConfigError(f"{where}.project: required")
    policy = r.get("policy", str)
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", policy):
        raise ConfigError(f"{where}.policy: not a valid resource name: {policy!r}")
    region = r.get("region", str, "")
    if region and not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+", region):
        raise ConfigError(f"{where}.region: expected \"\" (global) or a region like us-central1, got {region!r}")
    start, end = r.get("band_start", int), r.get("band_end", int)
    _band_bounds(start, end, where, "band_start", "band_end")
    max_rules = r.get("max_rules", int, 0)
    if max_rules < 0:
        raise ConfigError(f"{where}.max_rules: must be 0 (the band's size) or positive, got {max_rules}")
    label = r.get("lease_label", str, "")
    if label and (not _LABEL_KEY.fullmatch(label) or label in (lease.mode_label, lease.band_label)):
        raise ConfigError(f"{where}.lease_label: not a valid label key, or the same as lease.mode_label "
                          f"or lease.band_label: {label!r}")
    r.done()
    return TargetSettings(name, project, policy, region, start, end, max_rules, label)


def _targets(root: _Reader, lease: LeaseSettings) -> list[TargetSettings]:
    listed = root.get("targets", list, [])
    out = []
    for i, table in enumerate(listed):
        out.append(_target(_Reader(table, f"targets[{i}]"), lease))
    return out


def _check_targets(targets: list[TargetSettings], offset: int) -> None:
    """Unique names, one target per policy; ``offset``: 1 when the first
    target is [policy]'s (the rest are [[targets]] entries)."""
    seen: dict[str, int] = {}
    policies: dict[tuple[str, str, str], str] = {}
    for i, t in enumerate(targets):
        where = "policy" if i < offset else f"targets[{i - offset}]"
        if t.name in seen:
            why = " (the [policy] target is named 'default')" if t.name == DEFAULT_TARGET else ""
            raise ConfigError(f"{where}.name: {t.name!r} is already a target's name{why}")
        seen[t.name] = i
        key = (t.project, t.policy, t.region)
        if key in policies:
            raise ConfigError(f"{where}.policy: {t.policy!r} (project {t.project!r}, region {t.region or 'global'!r}) "
                              f"is already target {policies[key]!r}'s policy: one band per policy")
        policies[key] = t.name


def _check_target_refs(names: tuple[str, ...], where: str, refs: tuple[str, ...]) -> None:
    for i, ref in enumerate(refs):
        if ref not in names:
            raise ConfigError(f"{where}.targets[{i}]: no target named {ref!r} (targets: {', '.join(names)})")


def from_dict(doc: Mapping[str, Any]) -> Settings:
    """Validates a parsed document (the TOML file's content) into Settings."""
    root = _Reader(doc, "")
    lease = _lease(root.sub("lease"))
    listed = _targets(root, lease)
    policy_table, band_table = root.sub("policy"), root.sub("band")
    if listed and "name" not in policy_table.table and "project" not in policy_table.table:
        # No [policy] target: the first of [[targets]] is the default one.
        first = listed[0]
        policy_table = _Reader({**policy_table.table, "project": first.project, "name": first.policy,
                                "region": first.region}, "policy")
        band_table = _Reader({**band_table.table, "start": first.band_start, "end": first.band_end,
                              "max_rules": first.max_rules}, "band")
        if first.lease_label:
            lease = replace(lease, label=first.lease_label)
        targets = listed
        offset = 0
    else:
        targets, offset = [], 1
    policy = _policy(policy_table)
    band = _band(band_table)
    if listed and not targets:
        default = TargetSettings(DEFAULT_TARGET, policy.project, policy.name, policy.region,
                                 band.start, band.end, band.max_rules, lease.label)
        targets = [default, *listed]
    _check_targets(targets, offset)
    src_reader = root.sub("sources")
    sources = {kind: _source(kind, src_reader.sub(kind)) for kind in SOURCE_KINDS}
    src_reader.done()
    feeds_table = root.get("feeds", dict, {})
    feeds = {name: _feed(name, _Reader(tbl, f"feeds.{name}")) for name, tbl in feeds_table.items()}
    guards = _guards(root.sub("guards"))
    detectors = _detectors(root.sub("detectors"))
    alerts = _alerts(root.sub("alerts"))
    groups = _groups(root.sub("groups"))
    names = tuple(t.name for t in targets) or (DEFAULT_TARGET,)
    for kind, src in sources.items():
        _check_target_refs(names, f"sources.{kind}", src.targets)
    for name, feed in feeds.items():
        _check_target_refs(names, f"feeds.{name}", feed.targets)
    # Sections owned by other parts of the project (deploy, bootstrap) are
    # validated by their own readers.
    for key in ("deploy", "bootstrap"):
        root.used.add(key)
    root.done()
    deploy = doc.get("deploy") or {}
    function_timeout = _function_timeout(deploy)
    _check_timing(policy, lease, function_timeout)
    attempts = deploy.get("max_delivery_attempts", 5) if isinstance(deploy, Mapping) else 5
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 5 <= attempts <= 100:
        raise ConfigError(f"deploy.max_delivery_attempts: must be between 5 and 100, got {attempts!r}")
    return Settings(policy, band, lease, sources, feeds, guards, detectors, alerts,
                    function_timeout=function_timeout, max_delivery_attempts=attempts,
                    groups=groups, raw=dict(doc), targets=tuple(targets))


def _function_timeout(deploy: Mapping[str, Any]) -> timedelta:
    value = deploy.get("timeout", "540s") if isinstance(deploy, Mapping) else "540s"
    timeout = parse_duration(value, "deploy.timeout")
    if not timedelta(seconds=1) <= timeout <= timedelta(seconds=540):
        raise ConfigError(f"deploy.timeout: expected 1s..540s (the event-driven limit), got {value!r}")
    return timeout


def _check_timing(policy: PolicySettings, lease: LeaseSettings, function_timeout: timedelta) -> None:
    """The timing bound the lease rests on (README, "Concurrency"): no
    mutation attempt starts with less time left than the longest it can
    take (``policy.request_timeout + policy.operation_timeout``) plus
    ``lease.margin``, so a lease or a delivery shorter than twice that
    would spend half its time or more unable to act."""
    need = policy.mutation_bound + lease.margin
    bound = (f"2 x (policy.request_timeout + policy.operation_timeout + lease.margin) = "
             f"{int(2 * need.total_seconds())}s")
    if lease.margin < timedelta(seconds=1):
        raise ConfigError("lease.margin: must be at least 1s")
    if lease.duration < 2 * need:
        raise ConfigError(f"lease.duration: must be at least {bound}, so that no operation can outlive "
                          f"the lease; got {int(lease.duration.total_seconds())}s")
    if function_timeout < 2 * need:
        raise ConfigError(f"deploy.timeout: must be at least {bound}, so that a delivery can finish the "
                          f"operations it starts; got {int(function_timeout.total_seconds())}s")


def load(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Loads the file (``RESPONDER_CONFIG`` or the bundled default), applies
    the environment overrides and validates everything."""
    env = os.environ if environ is None else environ
    file = Path(path or env.get("RESPONDER_CONFIG") or DEFAULT_PATH)
    try:
        with open(file, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file.name}: not valid TOML: {exc}") from None
    for var, dotted in ENV_OVERRIDES.items():
        if var in env:
            _set_dotted(doc, dotted, env[var])
    return from_dict(doc)
