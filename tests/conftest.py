"""Shared fixtures: the real brokers of tests/brokers.py (mosquitto, mosquitto_auth,
amqtt_broker, mqtt_broker)."""

from tests.brokers import *  # noqa: F401,F403
