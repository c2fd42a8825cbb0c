"""edgeva's tests (a package, so that helpers import as tests.brokers, tests.agent_harness)."""
