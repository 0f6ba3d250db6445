"""A snapshot feed's withdrawals do not depend on the order of the band's rules.

Found by the stateful test (tests/model): feed fa held 45.9.148.0/23 and
45.9.149.0/25, feed fb held 45.9.148.0/24. A snapshot of fa that keeps
neither withdrew the /25 first when its rule came first: that split the /23
around it and merged the /23's piece 45.9.148.0/24 (fa, medium) into fb's
entry of the same range, so after the /23 went too, fb's /24 was left with
fa's severity. Withdrawing the broadest first removes the /23 whole."""

from __future__ import annotations

from bandkit import BAND, NOW, at, net, our_rule

from config.settings import FeedSettings
from handlers.threat_feed import _withdrawals
from responder.model import Intent, Severity, Verb
from responder.planner import plan_reconcile, read_band


def test_a_snapshot_withdraws_the_same_whatever_the_rule_order() -> None:
    fa = {"expiry": at(240), "severity": Severity.MEDIUM, "sources": ("fa",)}
    fb = {"expiry": at(720), "severity": Severity.LOW, "sources": ("fb",)}
    keep = Intent(Verb.BLOCK, net("45.9.148.0/25"), "fa", expiry=at(240), severity=Severity.MEDIUM)
    for order in ((1000, 1001), (1001, 1000)):  # the narrow rule first, then the broad one first
        rules = [our_rule(order[0], ["45.9.149.0/25"], **fa), our_rule(order[1], ["45.9.148.0/23"], **fa),
                 our_rule(1002, ["45.9.148.0/24"], **fb)]
        band = read_band(rules, BAND)
        derive = _withdrawals("fa", FeedSettings(name="fa", snapshot=True, max_drop_share=1.0), [keep])
        plan = plan_reconcile(band, [*derive(band.entries(NOW)), keep], NOW, BAND)
        got = plan.entries
        assert net("45.9.149.0/25") not in got
        assert net("45.9.148.0/23") not in got
        fb_range = got[net("45.9.148.0/24")].meta
        assert (fb_range.severity, fb_range.expiry, fb_range.sources) == (Severity.LOW, at(720), frozenset({"fb"})), order
