"""schemas.topics.parse_topic: every topic the builders make parses back to its parts, and
anything a builder would refuse parses to None (what the agent, the fleet client and the
benchmarks read topics with)."""
from __future__ import annotations

import pytest

from edgeva.schemas import topics as T
from edgeva.schemas.topics import Topic, parse_topic


def test_every_built_topic_parses_back():
    assert parse_topic(T.state_topic("cam-01")) == Topic("cam-01", "state")
    assert parse_topic(T.device_metrics_topic("cam-01")) == Topic("cam-01", "metrics")
    assert parse_topic(T.tenant_metrics_topic("cam-01", "acme")) == Topic("cam-01", "metrics", "acme")
    assert parse_topic(T.events_topic("cam-01", "acme", "tracking")) == Topic("cam-01", "events", "acme", "tracking")
    assert parse_topic(T.reply_topic("cam-01", "acme", "op:1-2")) == Topic("cam-01", "reply", "acme", "op:1-2")
    for verb in T.VERBS:
        assert parse_topic(T.cmd_topic("cam-01", "acme", verb)) == Topic("cam-01", "cmd", "acme", verb)
        assert T.parse_cmd_topic(T.cmd_topic("cam-01", "acme", verb)) == ("cam-01", "acme", verb)


@pytest.mark.parametrize("topic", [
    "edgeva/v2/cam-01/state",             # another protocol version
    "edgeva/v1/cam 01/state",             # a device no builder makes
    "edgeva/v1/+/state",                  # a wildcard is never a device
    "edgeva/v1/cam-01/status",            # an unknown device topic
    "edgeva/v1/cam-01/acme",              # a tenant with nothing after it
    "edgeva/v1/cam-01/ac#me/metrics",     # a tenant no builder makes
    "edgeva/v1/cam-01/acme/cmd/reboot",   # not a verb
    "edgeva/v1/cam-01/acme/events/a b",   # an app no builder makes
    "edgeva/v1/cam-01/acme/reply/" + "r" * 129,  # a request id too long
    "edgeva/v1/cam-01/acme/events/x/y",   # one part too many
    "edgeva/v1/cam-01/acme/logs/x",       # an unknown kind
    "",
])
def test_anything_else_is_none(topic):
    assert parse_topic(topic) is None


def test_not_a_string_is_none():
    assert parse_topic(None) is None  # type: ignore[arg-type]
    assert parse_topic(b"edgeva/v1/cam-01/state") is None  # type: ignore[arg-type]


def test_subscriptions_are_the_protocol_topics_with_wildcards_where_asked():
    """The filters the agent, the clients, the Node-RED flows and the benchmarks subscribe to:
    each matches exactly the topics its builder makes, and a wildcard goes only where ``ANY``
    is passed (a publish topic never takes one)."""
    import paho.mqtt.client as mqtt

    assert T.state_subscription() == "edgeva/v1/+/state"
    assert T.state_subscription("cam-01") == T.state_topic("cam-01")
    assert T.device_metrics_subscription() == "edgeva/v1/+/metrics"
    assert T.events_subscription() == "edgeva/v1/+/+/events/+"
    assert T.events_subscription(tenant="default") == "edgeva/v1/+/default/events/+"
    assert T.events_subscription("cam-01", "acme", "tracking") == T.events_topic("cam-01", "acme", "tracking")
    assert T.tenant_metrics_subscription() == "edgeva/v1/+/+/metrics"
    assert T.reply_subscription(T.ANY, "acme") == "edgeva/v1/+/acme/reply/+"
    assert T.reply_topic("cam-01", "acme", "r1") == T.reply_prefix("cam-01", "acme") + "r1"
    cases = [(T.state_subscription(), T.state_topic("cam-01"), T.device_metrics_topic("cam-01")),
             (T.device_metrics_subscription(), T.device_metrics_topic("cam-01"), T.tenant_metrics_topic("cam-01", "a")),
             (T.events_subscription(tenant="a"), T.events_topic("cam-01", "a", "x"), T.events_topic("cam-01", "b", "x")),
             (T.tenant_metrics_subscription(), T.tenant_metrics_topic("cam-01", "a"), T.device_metrics_topic("cam-01")),
             (T.reply_subscription(T.ANY, "a"), T.reply_topic("cam-01", "a", "r"), T.reply_topic("cam-01", "b", "r"))]
    for sub, hit, miss in cases:
        assert mqtt.topic_matches_sub(sub, hit) and not mqtt.topic_matches_sub(sub, miss), (sub, hit, miss)
    for bad in (lambda: T.state_topic(T.ANY), lambda: T.events_topic("cam-01", T.ANY, "x"),
                lambda: T.reply_subscription("cam-01", T.ANY), lambda: T.events_subscription(tenant="a/b"),
                lambda: T.state_subscription("#")):
        with pytest.raises(T.EdgevaError):
            bad()
