"""STIX 2.1 indicators to sightings.

Follows STIX 2.1 (OASIS, https://docs.oasis-open.org/cti/stix/v2.1/), section
4.7 *Indicator* and section 9 *STIX Patterning*. Accepted input: a bundle
(``{"type": "bundle", "objects": [...]}``), a single indicator object, or a
list of objects.

An ``indicator`` with ``pattern_type: stix`` (or none, as in STIX 2.0) yields
one sighting per comparison of ``ipv4-addr:value`` / ``ipv6-addr:value``
using ``=``, ``IN`` (each set member) or ``ISSUBSET``, when every join in the
pattern is ``OR`` (inside and between observation expressions). Patterns are
parsed with ``stix2-patterns`` (the OASIS reference grammar), never with
regular expressions.

Skipped and counted (the indicator is valid but does not name addresses to
block): other pattern types, patterns without an address comparison, any
``AND``/``FOLLOWEDBY`` join, any qualifier (``WITHIN``, ``REPEATS``,
``START/STOP``), an address comparison with any other operator (``!=``,
``MATCHES``, ``LIKE``, ``NOT ...``), and indicators whose ``valid_until`` is
not after ``now`` (unless revoked). Comparisons on other object types in an
OR-only pattern are ignored (an OR means the address alone indicates).

ItemErrors: a missing or malformed pattern (also one nested or chained
too deeply to read, such as 1,000 OR-joined comparisons), a bad
``valid_until`` or ``confidence``, an address value that is not a string or
not address-shaped.
``revoked: true`` gives sightings with ``revoked=True``. Non-indicator
objects are ignored. The reason is the indicator ``name`` (else its id).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from stix2patterns.exceptions import ParseException  # type: ignore[import-untyped]
from stix2patterns.v21.grammars.STIXPatternListener import STIXPatternListener  # type: ignore[import-untyped]
from stix2patterns.v21.pattern import Pattern  # type: ignore[import-untyped]

from responder.model import ParseResult

from ._common import Collector, parse_time
from .errors import FormatError

_ADDRESS_TYPES = ("ipv4-addr", "ipv6-addr")
_ADDRESS_OPS = ("=", "IN", "ISSUBSET")


def _unquote(token: str) -> str | None:
    """Python text of a STIX StringLiteral token, None for other literals."""
    if len(token) >= 2 and token[0] == token[-1] == "'":
        return token[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    return None


class _Inspector(STIXPatternListener):
    """Collects (object type, path, operator, [literal tokens]) for every
    comparison, and whether any non-OR join or qualifier appears."""

    def __init__(self) -> None:
        self.comparisons: list[tuple[str, str, str, list[str]]] = []
        self.non_or: set[str] = set()
        self._type = ""
        self._path: list[str] = []

    def exitObjectType(self, ctx: Any) -> None:
        self._type = ctx.getText()

    def exitFirstPathComponent(self, ctx: Any) -> None:
        self._path = [ctx.getText()]

    def exitKeyPathStep(self, ctx: Any) -> None:
        self._path.append(ctx.getText().lstrip("."))

    def exitIndexPathStep(self, ctx: Any) -> None:
        self._path.append(ctx.getText())

    def _add(self, op: str, negated: bool, literals: list[str]) -> None:
        op = f"NOT {op}" if negated else op
        self.comparisons.append((self._type, ".".join(self._path), op, literals))

    def exitPropTestEqual(self, ctx: Any) -> None:
        op = (ctx.EQ() or ctx.NEQ()).getText()
        self._add(op, bool(ctx.NOT()), [ctx.primitiveLiteral().getText()])

    def exitPropTestSet(self, ctx: Any) -> None:
        literals = [lit.getText() for lit in ctx.setLiteral().primitiveLiteral()]
        self._add("IN", bool(ctx.NOT()), literals)

    def exitPropTestIsSubset(self, ctx: Any) -> None:
        self._add("ISSUBSET", bool(ctx.NOT()), [ctx.StringLiteral().getText()])

    def _other(self, op: str, ctx: Any) -> None:
        self._add(op, bool(getattr(ctx, "NOT", lambda: None)()), [])

    def exitPropTestOrder(self, ctx: Any) -> None:
        self._other("ORDER", ctx)

    def exitPropTestLike(self, ctx: Any) -> None:
        self._other("LIKE", ctx)

    def exitPropTestRegex(self, ctx: Any) -> None:
        self._other("MATCHES", ctx)

    def exitPropTestIsSuperset(self, ctx: Any) -> None:
        self._other("ISSUPERSET", ctx)

    def exitPropTestExists(self, ctx: Any) -> None:
        self._other("EXISTS", ctx)

    def exitComparisonExpressionAnd(self, ctx: Any) -> None:
        if ctx.AND():
            self.non_or.add("AND")

    def exitObservationExpressionAnd(self, ctx: Any) -> None:
        if ctx.AND():
            self.non_or.add("AND")

    def exitObservationExpressions(self, ctx: Any) -> None:
        if ctx.FOLLOWEDBY():
            self.non_or.add("FOLLOWEDBY")

    def exitObservationExpressionWithin(self, ctx: Any) -> None:
        self.non_or.add("WITHIN")

    def exitObservationExpressionRepeated(self, ctx: Any) -> None:
        self.non_or.add("REPEATS")

    def exitObservationExpressionStartStop(self, ctx: Any) -> None:
        self.non_or.add("START/STOP")


def pattern_addresses(pattern: str) -> tuple[list[str] | None, str]:
    """Address literals a STIX pattern blocks, or (None, why skipped).

    Raises ValueError for a malformed pattern. Returned values are the raw
    literal contents (not yet shape-checked); a non-string literal is
    returned as its token text so the caller can report it.
    """
    inspector = _Inspector()
    try:
        Pattern(pattern).walk(inspector)
    except ParseException as exc:
        raise ValueError(f"malformed STIX pattern: {exc}") from None
    except RecursionError:
        # Both the parser and the tree walk recurse once per nesting level,
        # and an OR chain nests one level per term.
        raise ValueError("malformed STIX pattern: nested or chained too deeply to read") from None
    if inspector.non_or:
        return None, "uses " + "/".join(sorted(inspector.non_or))
    values: list[str] = []
    for obj_type, path, op, literals in inspector.comparisons:
        if obj_type not in _ADDRESS_TYPES:
            continue
        if path != "value" or op not in _ADDRESS_OPS:
            return None, f"compares {obj_type}:{path} with {op}"
        values.extend(_unquote(lit) or lit for lit in literals)
    if not values:
        return None, "no address comparison"
    return values, ""


def parse_stix(doc: Any, now: datetime) -> ParseResult:
    """Sightings from a decoded STIX bundle, object, or list of objects."""
    if isinstance(doc, list):
        objects = doc
    elif isinstance(doc, dict):
        if doc.get("type") == "bundle":
            objects = doc.get("objects", [])
            if not isinstance(objects, list):
                raise FormatError("stix: bundle 'objects' is not a list")
        elif isinstance(doc.get("type"), str):
            objects = [doc]
        else:
            raise FormatError("stix: top-level object has no 'type'")
    else:
        raise FormatError("stix: top level must be a bundle, an object or a list")
    out = Collector(now)
    for index, obj in enumerate(objects):
        if isinstance(obj, dict) and obj.get("type") == "indicator":
            try:
                _indicator(out, index, obj)
            except RecursionError:
                out.error(f"objects[{index}]", "indicator nested too deeply to read")
    return out.result()


def _indicator(out: Collector, index: int, ind: dict[str, Any]) -> None:
    item = ind.get("id") if isinstance(ind.get("id"), str) else f"objects[{index}]"
    pattern_type = ind.get("pattern_type", "stix")
    if pattern_type != "stix":
        out.skipped += 1
        return
    pattern = ind.get("pattern")
    if not isinstance(pattern, str):
        out.error(item, "indicator has no pattern")
        return
    fields: dict[str, Any] = {}
    try:
        if ind.get("valid_until") is not None:
            fields["expiry"] = parse_time(ind["valid_until"])
        conf = ind.get("confidence")
        if conf is not None:
            if isinstance(conf, bool) or not isinstance(conf, int) or not 0 <= conf <= 100:
                raise ValueError("confidence must be an integer 0-100")
            fields["confidence"] = conf
        values, _why = pattern_addresses(pattern)
    except ValueError as exc:
        out.error(item, str(exc))
        return
    if values is None:
        out.skipped += 1
        return
    name = ind.get("name")
    fields["reason"] = name if isinstance(name, str) and name else item
    fields["revoked"] = ind.get("revoked") is True
    for value in values:
        out.add(value, f"{item}: {value}", **fields)
