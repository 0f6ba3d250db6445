"""Pure parsers that turn event payloads into sightings.

* ``feeds``: threat feeds (``parse_feed``, ``detect_feed_format``), with
  ``stix`` and ``misp`` for structured intelligence.
* ``logs``: Cloud Logging entries through data-driven detectors.
* ``alerts``: Cloud Monitoring incidents and Security Command Center
  notifications.

No parser does I/O, reads the clock or the environment, or logs. A wholly
unreadable payload raises ``FormatError``; bad items inside a readable one
become ``ItemError`` values next to the good sightings.
"""

from .errors import FormatError
from .feeds import FEED_FORMATS, detect_feed_format, parse_feed

__all__ = ["FEED_FORMATS", "FormatError", "detect_feed_format", "parse_feed"]
