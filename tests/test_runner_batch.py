"""The runner batches messages of several inputs for modules that declare ``max_batch``."""

from __future__ import annotations

import os
import threading
import time
from multiprocessing import Pipe
from typing import Literal

from edgeva.agent.dataplane.ring import RingConsumer, RingProducer
from edgeva.agent.dataplane.segment import segment_name
from edgeva.agent.runner import Runner, _Channel
from edgeva.modules.base import Module, ModuleConfig
from edgeva.schemas import runner as R
from edgeva.schemas.message import Message


class BatchProbeConfig(ModuleConfig):
    type: Literal["batchprobe"] = "batchprobe"


class BatchProbe(Module[BatchProbeConfig]):
    """Slow on purpose, so that messages of both inputs are waiting by the next call."""

    config_class = BatchProbeConfig

    def setup(self) -> None:
        self.max_batch = 4

    def process_batch(self, msgs):
        time.sleep(0.05)
        return [m.derive(batch=len(msgs), cams=sorted({x.source for x in msgs})) for m in msgs]


def test_frames_of_two_cameras_are_batched_and_all_delivered():
    tag = f"b{os.getpid()}"
    cams = [RingProducer.create(segment_name(tag, f"cam{i}"), 4096, nslots=4) for i in range(2)]
    spec = R.RunnerSpec(
        name="probe", type=f"{__name__}:BatchProbe", config={"type": "batchprobe"}, device="t",
        inputs=[R.InputSpec(ring=c.name) for c in cams], output_ring=segment_name(tag, "out"),
    )
    mine, theirs = Pipe()
    runner = Runner(spec, _Channel(theirs))
    assert runner.start()
    out = RingConsumer.attach(spec.output_ring)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    n = 6
    for i in range(n):
        for k, cam in enumerate(cams):
            cam.publish(Message(i, f"cam{k}"), timeout=5)
    got = []
    while len(got) < 2 * n:
        m = out.get(timeout=5)
        assert m is not None, f"only {len(got)} of {2 * n} messages came out"
        got.append((m.source, m.frame_id, m.fields["batch"], m.fields["cams"]))
    assert sorted((s, f) for s, f, _, _ in got) == sorted((f"cam{k}", i) for i in range(n) for k in range(2))
    assert any(b == 2 and cams_ == ["cam0", "cam1"] for _, _, b, cams_ in got)  # batched together
    assert all(b <= 2 for _, _, b, _ in got)  # never two messages of one input in a batch
    runner.stopping = True
    t.join(5)
    out.close()
    for c in cams:
        c.close()
