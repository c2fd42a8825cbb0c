"""Property-based tests of the ring's bookkeeping: random interleavings of publish, get,
release, attach and detach, checked against a model after every step."""

from __future__ import annotations

import os
import uuid

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgeva.agent.dataplane import ring as R
from edgeva.agent.dataplane.segment import segment_name
from edgeva.schemas.message import Message


class RingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.prod = R.RingProducer.create(
            segment_name(f"prop{os.getpid()}", uuid.uuid4().hex[:10]), 1024, nslots=4, max_consumers=3
        )
        self.cons: dict[int, R.RingConsumer] = {}
        self.start: dict[int, int] = {}  # consumer key -> first seq it may see
        self.seen: dict[int, list[int]] = {}
        self.keys = 0

    @rule(policy=st.sampled_from(["block", "drop_oldest"]), depth=st.integers(1, 3))
    @precondition(lambda self: len(self.cons) < 3)
    def attach(self, policy: str, depth: int) -> None:
        c = R.RingConsumer.attach(self.prod.name, policy=policy, depth=depth)
        self.cons[self.keys] = c
        self.start[self.keys] = self.prod.published
        self.seen[self.keys] = []
        self.keys += 1

    @rule(data=st.data())
    @precondition(lambda self: self.cons)
    def detach(self, data) -> None:
        k = data.draw(st.sampled_from(sorted(self.cons)))
        self.check_consumer(k)
        self.cons.pop(k).close()

    @rule()
    def publish(self) -> None:
        free_before = self.free_slots()
        try:
            self.prod.publish(Message(self.prod.published), timeout=0)
        except R.RingFull:
            # Refused only when nothing was free and a block consumer (or a held message)
            # pins the oldest slot.
            assert free_before == 0
            assert any(c.policy == "block" for c in self.cons.values()) or self.any_held()

    @rule(data=st.data())
    @precondition(lambda self: self.cons)
    def get(self, data) -> None:
        k = data.draw(st.sampled_from(sorted(self.cons)))
        m = self.cons[k].get(timeout=0)
        if m is not None:
            self.seen[k].append(m.frame_id)

    @rule(data=st.data())
    @precondition(lambda self: self.cons)
    def release(self, data) -> None:
        self.cons[data.draw(st.sampled_from(sorted(self.cons)))].release()

    # -- model checks ----------------------------------------------------------------------
    def free_slots(self) -> int:
        return R.ring_stats(self.prod.name).free_slots

    def any_held(self) -> bool:
        w, p = self.prod._w, self.prod
        return any(w[p._co + c.index * R.C_WORDS + R.C_HELD] >= 0 for c in self.cons.values())

    def check_consumer(self, k: int) -> None:
        c, seen, first = self.cons[k], self.seen[k], self.start[k]
        published = self.prod.published - first
        assert seen == sorted(set(seen)) and all(first <= s < self.prod.published for s in seen)
        assert c.consumed == len(seen)
        assert c.consumed + c.dropped + c.pending == published
        if c.policy == "block":
            assert c.dropped == 0 and seen == list(range(first, first + len(seen)))

    @invariant()
    def consumers_consistent(self) -> None:
        for k in self.cons:
            self.check_consumer(k)

    @invariant()
    def references_match_slots(self) -> None:
        p, w = self.prod, self.prod._w
        refs = [0] * p.nslots
        for c in self.cons.values():
            b = p._co + c.index * R.C_WORDS
            if w[b + R.C_HELD] >= 0:
                refs[w[b + R.C_HELD]] += 1
            for seq in range(w[b + R.C_NEXT], w[R.H_WSEQ]):
                refs[p._slot_of(seq)] += 1
        for s in range(p.nslots):
            i = p._so + s * R.S_WORDS
            assert w[i + R.S_REFS] == refs[s], f"slot {s}"
            assert (w[i + R.S_STATE] == R.FREE) == (refs[s] == 0), f"slot {s} state"

    @invariant()
    def drop_consumers_respect_depth(self) -> None:
        p, w = self.prod, self.prod._w
        for c in self.cons.values():
            if c.policy == "drop_oldest":
                assert c.pending <= w[p._co + c.index * R.C_WORDS + R.C_DEPTH]

    def teardown(self) -> None:
        for c in self.cons.values():
            c.close()
        self.prod.close()


TestRingBookkeeping = RingMachine.TestCase
TestRingBookkeeping.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
