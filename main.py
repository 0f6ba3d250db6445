"""Cloud Functions entry points: one per Pub/Sub topic.

Each decodes its CloudEvent envelope and hands the message to one handler;
exceptions propagate (a raise makes Pub/Sub redeliver). Loading this module
validates the configuration, so a bad one stops the function at start.
"""

from __future__ import annotations

from typing import Any

import functions_framework

from handlers import alert, cleanup, log_sink, manual, threat_feed
from handlers.runtime import configure, dispatch

configure()


@functions_framework.cloud_event
def on_threat_feed(event: Any) -> None:
    dispatch("feed", threat_feed.handle, event)


@functions_framework.cloud_event
def on_log_sink(event: Any) -> None:
    dispatch("log", log_sink.handle, event)


@functions_framework.cloud_event
def on_alert(event: Any) -> None:
    dispatch("alert", alert.handle, event)


@functions_framework.cloud_event
def on_manual(event: Any) -> None:
    dispatch("manual", manual.handle, event)


@functions_framework.cloud_event
def on_cleanup(event: Any) -> None:
    dispatch("cleanup", cleanup.handle, event)
