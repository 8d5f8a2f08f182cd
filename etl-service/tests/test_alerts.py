"""The alert webhook against a real local HTTP receiver."""

from __future__ import annotations

from etl_service.ops.alerts import AlertNotifier
from testsupport.webhook import Receiver


def test_fires_once_per_incident_and_resolves(receiver):
    notifier = AlertNotifier(receiver.url, fmt="pagerduty", routing_key="rk", failure_threshold=3)
    for _ in range(2):
        notifier.record_cycle(False, error="source down")
    assert receiver.received == []  # below the threshold: no page
    for _ in range(5):
        notifier.record_cycle(False, error="source down")
    assert len(receiver.received) == 1  # one incident, one page
    trigger = receiver.received[0]
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "analytics-etl:sync_failing"
    assert trigger["routing_key"] == "rk"
    assert trigger["payload"]["custom_details"]["last_error"] == "source down"
    notifier.record_cycle(True)
    notifier.record_cycle(True)
    assert [m["event_action"] for m in receiver.received] == ["trigger", "resolve"]
    assert receiver.received[1]["dedup_key"] == "analytics-etl:sync_failing"


def test_stale_data_alert_and_recovery(receiver):
    notifier = AlertNotifier(receiver.url, fmt="slack", stale_after_seconds=60)
    notifier.record_data_age(10)
    notifier.record_data_age(120)
    notifier.record_data_age(180)
    notifier.record_data_age(5)
    texts = [m["text"] for m in receiver.received]
    assert len(texts) == 2
    assert "FIRING" in texts[0] and "data_stale" in texts[0] and "120s" in texts[0]
    assert "RESOLVED" in texts[1]


def test_opsgenie_shape(receiver):
    notifier = AlertNotifier(receiver.url, fmt="opsgenie", failure_threshold=1)
    notifier.record_cycle(False, error="boom")
    notifier.record_cycle(True)
    assert [m["action"] for m in receiver.received] == ["create", "close"]
    assert receiver.received[0]["alias"] == "analytics-etl:sync_failing"


def test_an_unreachable_or_failing_webhook_never_raises():
    dead = AlertNotifier("http://127.0.0.1:9/hook", failure_threshold=1, timeout=0.5)
    dead.record_cycle(False, error="x")  # logged, not raised
    failing = Receiver(status=500)
    try:
        notifier = AlertNotifier(failing.url, failure_threshold=1)
        notifier.record_cycle(False, error="x")
        assert len(failing.received) == 1
    finally:
        failing.close()
