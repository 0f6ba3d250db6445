"""The concurrency and fault campaigns of scripts/campaign.py at reduced size.

Worker processes drive the real entry points against one local Cloud Armor
API; the final band is checked address by address against a reference model
computed from the generated events alone (see scripts/campaign.py). Each worker
is an instance with deploy.concurrency 2: two events at once on two threads
sharing its responder. Full size:
``.venv/bin/python scripts/campaign.py --workers 16 --events 2000 --concurrency 4 [--faults 0.25] [--kill]``.
"""

from __future__ import annotations

import campaign


def _check(result: campaign.Result) -> None:
    report = "\n".join(result.lines())
    print(report)
    assert result.dead_letters == 0, report
    assert result.diffs == {"missing": [], "extra": [], "wrong_expiry": []}, report
    assert result.problems == [], report
    assert result.differences == 0
    assert result.peak_in_flight == result.spec.concurrency > 1, "no worker served events at once"


def test_concurrency_campaign_converges_to_the_reference_band_through_the_quota_path() -> None:
    # quota 45 with 5 rules outside the band leaves 40 for it: appenders hit the
    # project quota (QUOTA_EXCEEDED) long before band.max_rules, so every
    # quota-full reconcile runs under the lease while the others keep appending.
    # 40 rules are close to what the distinct expiries and sources need, so a
    # reconcile sometimes evicts; a block evicted late stays missing. Those
    # addresses are reported apart (campaign.compare), from the workers'
    # ``evicted`` records; anything else missing is a difference.
    spec = campaign.Spec(workers=2, concurrency=2, events=150, op_delay=(0.01, 0.05), max_rules=60, quota=45, universe=30,
                         lease_duration=20, lease_wait=30, seed=7, time_limit=240)
    result = campaign.run(spec)
    _check(result)
    assert result.op_errors.get("addRule:QUOTA_EXCEEDED", 0) > 0, "the quota path was not exercised"
    assert result.lease_takes > 0


def test_fault_campaign_with_a_killed_lease_holder_converges_to_the_reference_band() -> None:
    spec = campaign.Spec(workers=2, concurrency=2, events=100, op_delay=(0.01, 0.05), max_rules=40, quota=200, universe=30,
                         faults=0.2, kill=True, commit_then_timeout_mode="reset", lease_duration=20, lease_wait=20,
                         seed=11, time_limit=300)
    result = campaign.run(spec)
    _check(result)
    assert sum(v for k, v in result.faults.items() if k != "latency") > 0.15 * sum(result.api_calls.values())
    assert result.kills >= 1
    assert result.orphaned >= result.kills  # every event in flight on a killed worker went to another


def test_two_targets_and_a_group_feed_converge_to_their_own_reference() -> None:
    # A regional policy as a second target (some manual blocks narrowed to
    # one), and a snapshot feed stored in address groups on an Enterprise API.
    spec = campaign.Spec(workers=2, concurrency=2, events=100, op_delay=(0.01, 0.05), max_rules=60, quota=200, universe=30,
                         lease_duration=20, lease_wait=30, seed=7, time_limit=240, targets=2, group_feed=True)
    result = campaign.run(spec)
    _check(result)
    assert set(result.bands) == {"default", "notebooks"} and all(result.bands.values())
    assert any(k.startswith("manual-block-") for k in result.kinds), "no manual block was narrowed to one target"
    assert result.kinds["feed-group"] == 5
    assert "car-feed-g-v4-1" in result.groups and "car-feed-g-v6-1" in result.groups


def test_compare_explains_only_what_an_eviction_covers() -> None:
    n = campaign.ipaddress.ip_network
    expected = [(n("45.9.148.18/32"), 600.0), (n("45.9.148.22/32"), 600.0), (n("45.9.148.30/32"), 600.0),
                (n("185.220.100.0/24"), 1200.0)]
    actual = [(n("45.9.148.30/32"), 600.0), (n("185.220.100.0/24"), 900.0), (n("91.92.109.0/28"), 600.0)]
    # Nothing evicted: two hosts missing, the /24 short, the /28 extra.
    diffs, explained = campaign.compare(expected, actual)
    assert (diffs["missing"], diffs["extra"], explained) == (["45.9.148.18/32", "45.9.148.22/32"], ["91.92.109.0/28"], [])
    assert diffs["wrong_expiry"] == ["185.220.100.0/24: want 197001010020 have 197001010015"]
    # .18 and the first half of the /24 were evicted: only those are explained.
    diffs, explained = campaign.compare(expected, actual, [n("45.9.148.18/32"), n("185.220.100.0/25"), n("91.92.109.0/28")])
    assert explained == ["45.9.148.18/32", "185.220.100.0/25"]
    assert diffs == {"missing": ["45.9.148.22/32"], "extra": ["91.92.109.0/28"],
                     "wrong_expiry": ["185.220.100.128/25: want 197001010020 have 197001010015"]}
