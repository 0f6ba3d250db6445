"""The configuration file: defaults, environment overrides, and errors that
name the field."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from config import settings as config

DEFAULT = Path(config.DEFAULT_PATH)


def _doc() -> dict[str, Any]:
    with open(DEFAULT, "rb") as fh:
        return tomllib.load(fh)


def test_bundled_configuration_is_valid() -> None:
    loaded = config.load(environ={})
    assert (20000, 20999) == (loaded.band.start, loaded.band.end)
    assert timedelta(minutes=15) == loaded.band.expiry_granularity
    assert {"manual", "feed", "log", "alert"} == set(loaded.sources)


def test_environment_overrides_deployment_values() -> None:
    env = {
        "RESPONDER_PROJECT": "prod-ml",
        "RESPONDER_POLICY": "edge",
        "RESPONDER_REGION": "us-central1",
        "RESPONDER_API_ENDPOINT": "http://127.0.0.1:8080",
        "RESPONDER_BAND_START": "5000",
        "RESPONDER_BAND_END": "5999",
        "RESPONDER_VALIDATE_ONLY": "true",
    }
    loaded = config.load(environ=env)
    assert ("prod-ml", "edge", "us-central1", "http://127.0.0.1:8080") == (
        loaded.policy.project, loaded.policy.name, loaded.policy.region, loaded.policy.api_endpoint)
    assert (5000, 5999, True) == (loaded.band.start, loaded.band.end, loaded.band.validate_only)


@pytest.mark.parametrize(
    "table, key, value, message",
    [
        ("band", "end", 100, "band.end: must be greater than band.start (20000)"),
        ("band", "start", -1, "band.start: must be between 0 and 2147483646"),
        ("band", "owner_tag", "Car 1", "band.owner_tag:"),
        ("band", "expiry_granularity", "90s", "band.expiry_granularity: must be a whole number of minutes"),
        ("band", "colour", "red", "band.colour: unknown setting"),
        ("policy", "name", "Not_Valid", "policy.name: not a valid resource name"),
        ("policy", "api_endpoint", "localhost:8080", "policy.api_endpoint: expected http(s)://host[:port]"),
        ("policy", "request_timeout", "soon", "policy.request_timeout: expected a duration"),
        ("guards", "allowlist", ["35.191.0.0/16", "nonsense"], "guards.allowlist[1]: not an IP address or CIDR"),
        ("lease", "label", "Lease!", "lease.label: not a valid label key"),
        # '$' also matches before a final newline: every name is matched whole
        ("band", "owner_tag", "car1\n", "band.owner_tag:"),
        ("policy", "api_endpoint", "http://127.0.0.1:8080\n", "policy.api_endpoint: expected http(s)://host[:port]"),
        ("lease", "label", "car-lease\n", "lease.label: not a valid label key"),
        ("lease", "mode_label", "car-mode\n", "lease.mode_label: not a valid label key"),
    ],
)
def test_invalid_value_fails_with_a_message_naming_the_field(table: str, key: str, value: object, message: str) -> None:
    doc = _doc()
    doc[table][key] = value
    with pytest.raises(config.ConfigError) as raised:
        config.from_dict(doc)
    assert str(raised.value).startswith(message)


def test_invalid_source_action_names_the_source() -> None:
    doc = _doc()
    doc["sources"]["feed"]["action"] = "deny(451)"
    with pytest.raises(config.ConfigError, match=r"^sources\.feed\.action: must be one of deny\(403\), deny\(404\), deny\(502\)"):
        config.from_dict(doc)


def test_default_ttl_longer_than_max_is_refused() -> None:
    doc = _doc()
    doc["sources"]["log"]["default_ttl"] = "30d"
    with pytest.raises(config.ConfigError, match=r"^sources\.log\.default_ttl: longer than max_ttl"):
        config.from_dict(doc)


def test_bad_feed_setting_names_the_feed() -> None:
    doc = _doc()
    doc["feeds"]["example-intel"]["max_drop_share"] = 1.5
    with pytest.raises(config.ConfigError, match=r"^feeds\.example-intel\.max_drop_share: must be between 0 and 1"):
        config.from_dict(doc)


def test_bad_environment_value_names_the_variable_setting() -> None:
    with pytest.raises(config.ConfigError, match=r"^band\.start \(from the environment\): expected an integer"):
        config.load(environ={"RESPONDER_BAND_START": "lots"})


def test_missing_file_is_reported() -> None:
    with pytest.raises(config.ConfigError, match="config file not found"):
        config.load("/nonexistent/responder.toml", environ={})


def test_unconfigured_feed_gets_defaults() -> None:
    loaded = config.load(environ={})
    feed = loaded.feed("never-configured")
    assert ("never-configured", None, 0, False) == (feed.name, feed.ttl, feed.min_confidence, feed.snapshot)


# ------------------------------------------------------------ feed pulls


def _pulled(**fields: Any) -> dict[str, Any]:
    doc = _doc()
    doc["feeds"]["pulled"] = {"format": "spamhaus", "url": "https://feeds.example.com/drop.txt", **fields}
    return doc


def test_a_pulled_feed_gets_an_hourly_schedule_and_pull_limits_by_default() -> None:
    feed = config.from_dict(_pulled()).feeds["pulled"]
    assert ("0 * * * *", 10 * 1024 * 1024, timedelta(seconds=30)) == (feed.every, feed.max_bytes, feed.timeout)


@pytest.mark.parametrize("every, cron", [
    ("15m", "*/15 * * * *"), ("1h", "0 * * * *"), ("6h", "0 */6 * * *"), ("1d", "0 0 * * *"),
    ("30 2 * * 1", "30 2 * * 1"),
])
def test_every_becomes_a_cron_schedule(every: str, cron: str) -> None:
    assert cron == config.from_dict(_pulled(every=every)).feeds["pulled"].every


def test_headers_name_environment_variables() -> None:
    feed = config.from_dict(_pulled(headers={"Authorization": "env:FEED_TOKEN"})).feeds["pulled"]
    assert {"Authorization": "FEED_TOKEN"} == feed.headers


@pytest.mark.parametrize("fields, message", [
    ({"headers": {"Authorization": "Bearer abc123"}}, r"^feeds\.pulled\.headers\.Authorization: only a reference to an environment variable"),
    ({"url": "https://user:pw@feeds.example.com/x"}, r"^feeds\.pulled\.url: credentials in the url are refused"),
    ({"url": "http://feeds.example.com/x"}, r"^feeds\.pulled\.url: plain http is allowed only for a loopback host"),
    ({"url": "file:///etc/passwd"}, r"^feeds\.pulled\.url: expected an https:// url"),
    ({"every": "7m"}, r"^feeds\.pulled\.every: '7m' does not divide an hour or a day"),
    ({"every": "hourly"}, r"^feeds\.pulled\.every: expected a schedule"),
    ({"max_bytes": 10}, r"^feeds\.pulled\.max_bytes: must be between"),
    ({"timeout": "10m"}, r"^feeds\.pulled\.timeout: at most 5m"),
    ({"proxy": "x"}, r"^feeds\.pulled\.proxy: unknown setting"),
])
def test_bad_pull_settings_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict(_pulled(**fields))


def test_pull_settings_without_a_url_are_refused() -> None:
    doc = _doc()
    doc["feeds"]["example-intel"]["every"] = "1h"
    with pytest.raises(config.ConfigError, match=r"^feeds\.example-intel\.every: only for a feed with a url"):
        config.from_dict(doc)


def test_feed_name_with_a_trailing_newline_is_refused() -> None:
    doc = _doc()
    doc["feeds"]["intel\n"] = {"ttl": "1h"}
    with pytest.raises(config.ConfigError, match=r"^feeds\.intel\n: feed names are 1 to 16"):
        config.from_dict(doc)


def test_detector_source_id_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    from handlers import detectors

    shipped = (DEFAULT.parent / "detectors.toml").read_text()
    (tmp_path / "detectors.toml").write_text(shipped.replace("[source_ids]\n", '[source_ids]\ncloud-armor-waf = "waf\\n"\n'))
    doc = _doc()
    doc["detectors"]["file"] = str(tmp_path / "detectors.toml")
    doc["detectors"]["lists_dir"] = str(DEFAULT.parent)
    with pytest.raises(config.ConfigError, match=r"source_ids\.cloud-armor-waf: 'waf\\n' is not a source id"):
        detectors.load(config.from_dict(doc).detectors)


def test_a_lease_or_a_function_timeout_shorter_than_twice_the_timing_bound_is_refused() -> None:
    """One mutation attempt may take request_timeout + operation_timeout,
    plus lease.margin: 20 + 60 + 10 = 90 s by default (README, "Concurrency")."""
    doc = _doc()
    doc["lease"]["duration"] = "179s"
    with pytest.raises(config.ConfigError, match=r"^lease.duration: must be at least 2 x .* = 180s"):
        config.from_dict(doc)
    doc["lease"]["duration"] = "180s"
    assert timedelta(seconds=180) == config.from_dict(doc).lease.duration
    doc["deploy"]["timeout"] = "120s"
    with pytest.raises(config.ConfigError, match=r"^deploy.timeout: must be at least 2 x .* = 180s"):
        config.from_dict(doc)
    doc["deploy"]["timeout"] = "541s"
    with pytest.raises(config.ConfigError, match=r"^deploy.timeout: expected 1s..540s"):
        config.from_dict(doc)
    doc["deploy"]["timeout"] = "540s"
    doc["policy"]["operation_timeout"] = "3m"
    with pytest.raises(config.ConfigError, match=r"^lease.duration: must be at least 2 x .* = 420s"):
        config.from_dict(doc)


def test_the_function_timeout_comes_from_the_file_or_the_environment() -> None:
    assert timedelta(seconds=540) == config.load(environ={}).function_timeout
    assert timedelta(seconds=300) == config.load(environ={"RESPONDER_FUNCTION_TIMEOUT": "300s"}).function_timeout


def test_follow_denies_is_on_for_log_and_alert_and_off_for_feeds_and_manual() -> None:
    loaded = config.load(environ={})
    assert {"manual": False, "feed": False, "log": True, "alert": True} == {
        kind: s.follow_denies for kind, s in loaded.sources.items()}


def test_follow_denies_on_manual_blocks_is_refused() -> None:
    doc = _doc()
    doc["sources"]["manual"]["follow_denies"] = True
    with pytest.raises(config.ConfigError, match=r"^sources\.manual\.follow_denies: an operator's block never extends"):
        config.from_dict(doc)


def test_follow_denies_may_be_turned_on_for_feeds() -> None:
    doc = _doc()
    doc["sources"]["feed"]["follow_denies"] = True
    assert config.from_dict(doc).source("feed").follow_denies


def _target(**fields: Any) -> dict[str, Any]:
    return {"name": "notebooks", "project": "p2", "policy": "nb-edge", "region": "us-central1",
            "band_start": 30000, "band_end": 30099, **fields}


def test_the_single_policy_is_the_one_default_target() -> None:
    s = config.from_dict(_doc())
    assert s.target_names == ("default",) and s.for_target("default") is s


def test_targets_follow_the_default_one_and_share_the_rest() -> None:
    doc = _doc()
    doc["targets"] = [_target(max_rules=40, lease_label="nb-lease")]
    s = config.from_dict(doc)
    assert s.target_names == ("default", "notebooks")
    nb = s.for_target("notebooks")
    assert (nb.policy.project, nb.policy.name, nb.policy.region) == ("p2", "nb-edge", "us-central1")
    assert (nb.band.start, nb.band.end, nb.band.max_rules, nb.lease.label) == (30000, 30099, 40, "nb-lease")
    assert nb.policy.request_timeout == s.policy.request_timeout and nb.band.owner_tag == s.band.owner_tag


def test_without_a_policy_target_the_first_listed_is_the_default() -> None:
    doc = _doc()
    del doc["policy"]["project"], doc["policy"]["name"]
    doc["targets"] = [_target(name="inference", region=""), _target()]
    s = config.from_dict(doc)
    assert s.target_names == ("inference", "notebooks")
    assert (s.policy.name, s.band.start, s.band.end) == ("nb-edge", 30000, 30099)


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "default"}, "targets[0].name: 'default' is already a target's name"),
    ({"name": "Bad_Name"}, "targets[0].name: 1 to 16"),
    ({"name": "a" * 17}, "targets[0].name: 1 to 16"),
    ({"project": ""}, "targets[0].project: required"),
    ({"policy": "No"}, "targets[0].policy: not a valid resource name"),
    ({"band_end": 30000}, "targets[0].band_end: must be an integer greater than targets[0].band_start"),
    ({"max_rules": -1}, "targets[0].max_rules: must be 0"),
    ({"lease_label": "car-mode"}, "targets[0].lease_label: not a valid label key"),
    ({"bands": 1}, "targets[0].bands: unknown setting"),
])
def test_a_bad_target_names_the_field(fields: dict[str, Any], message: str) -> None:
    doc = _doc()
    doc["targets"] = [_target(**fields)]
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.from_dict(doc)


def test_two_targets_on_one_policy_and_unknown_target_references_are_refused() -> None:
    doc = _doc()
    doc["targets"] = [_target(), _target(name="again")]
    with pytest.raises(config.ConfigError, match=r"targets\[1\].policy: 'nb-edge' .* is already target 'notebooks'"):
        config.from_dict(doc)
    doc["targets"] = [_target()]
    doc.setdefault("feeds", {})["intel"] = {"targets": ["notebooks", "inference"]}
    with pytest.raises(config.ConfigError, match=r"feeds.intel.targets\[1\]: no target named 'inference'"):
        config.from_dict(doc)
    del doc["feeds"]["intel"]
    doc["sources"]["manual"]["targets"] = ["default", ""]
    with pytest.raises(config.ConfigError, match=r"sources.manual.targets\[1\]"):
        config.from_dict(doc)
