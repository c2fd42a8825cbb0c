"""``edgeva bench detector``: the rows it plans (every bundled model, SSDLite or why not, per
provider), the recall/precision matcher against hand-made boxes, and one real row end to end
against the labelled vtest frames.

No timing is asserted (the machine is shared and noisy)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgeva.bench.detector import run as bench
from edgeva.bench.detector.run import (
    CENTERNET,
    YOLOX_NANO,
    DetectorCase,
    PlannedCase,
    detector_providers,
    format_table,
    plan_cases,
)
from edgeva.bench.detector.truth import (
    TRUTH_FILE,
    FrameTruth,
    PersonTruth,
    agreement,
    load_truth,
    match,
    score,
    score_frame,
)

# -- the matcher -------------------------------------------------------------------------------


def test_exact_boxes_are_all_hits() -> None:
    truth = FrameTruth(persons=[(0, 0, 10, 20), (30, 0, 40, 20)])
    s = score_frame(np.array([[30, 0, 40, 20, 0.9, 0], [0, 0, 10, 20, 0.8, 0]]), truth)
    assert (s.hits, s.false, s.persons, s.recall, s.precision) == (2, 0, 2, 1.0, 1.0)


def test_iou_half_is_a_hit_just_below_is_not() -> None:
    truth = FrameTruth(persons=[(0, 0, 10, 10)])
    assert score_frame(np.array([[0, 0, 10, 20]]), truth).hits == 1  # IoU 100/200 = 0.5
    s = score_frame(np.array([[0, 0, 10, 21]]), truth)  # IoU 100/210 = 0.476
    assert (s.hits, s.false, s.recall, s.precision) == (0, 1, 0.0, 0.0)


def test_one_person_counts_once_a_duplicate_is_a_false_alarm() -> None:
    truth = FrameTruth(persons=[(0, 0, 10, 20)])
    s = score_frame(np.array([[0, 0, 10, 20], [0, 1, 10, 20]]), truth)
    assert (s.hits, s.false, s.recall, s.precision) == (1, 1, 1.0, 0.5)


def test_pairs_best_iou_first_not_in_detection_order() -> None:
    # det 0 overlaps both persons (0.667 and 0.538); det 1 is exactly person 0. Taking det 0
    # first would give it person 0 and leave det 1 with nothing: 1 hit instead of 2.
    truth = FrameTruth(persons=[(0, 0, 10, 10), (5, 0, 15, 10)])
    s = score_frame(np.array([[2, 0, 12, 10], [0, 0, 10, 10]]), truth)
    assert (s.hits, s.false) == (2, 0)
    assert sorted((i, j) for i, j, _ in match(np.array([[2, 0, 12, 10], [0, 0, 10, 10]]),
                                              np.array(truth.persons))) == [(0, 1), (1, 0)]


def test_a_detection_on_an_ignore_box_counts_neither_way() -> None:
    truth = FrameTruth(persons=[(0, 0, 10, 20)], ignore=[(50, 0, 60, 20)])
    s = score_frame(np.array([[0, 0, 10, 20], [51, 0, 60, 20], [100, 0, 110, 20]]), truth)
    assert (s.hits, s.false, s.persons) == (1, 1, 1)  # the one at 100 is a false alarm


def test_frames_sum_and_a_frame_without_detections_counts_its_persons() -> None:
    truth = PersonTruth(clip="c", about="a", frames={
        "3": FrameTruth(persons=[(0, 0, 10, 20)]),
        "7": FrameTruth(persons=[(0, 0, 10, 20), (20, 0, 30, 20)]),
    })
    s = score({3: np.array([[0, 0, 10, 20, 0.9, 0]])}, truth)
    assert (s.hits, s.false, s.persons, s.recall, s.precision) == (1, 0, 3, 0.333, 1.0)
    none = score({}, truth)
    assert (none.recall, none.precision) == (0.0, None)  # nothing found: precision undefined


def test_agreement_shares_of_each_side() -> None:
    ref = [np.array([[0, 0, 10, 20], [30, 0, 40, 20]]), np.empty((0, 6))]
    other = [np.array([[0, 0, 10, 20]]), np.array([[5, 5, 9, 9]])]
    a = agreement(ref, other)
    assert (a.pairs, a.of_ref, a.of_self, a.mean_iou) == (1, 0.5, 0.5, 1.0)
    with pytest.raises(ValueError):
        agreement(ref, other[:1])


def test_the_truth_file_ships_with_the_bench_and_is_checked() -> None:
    t = load_truth()
    assert TRUTH_FILE.parent.parent == Path(bench.__file__).parent  # in the package, not tools/
    assert t.indices == [50, 150, 250, 350, 450, 550, 650, 750]
    assert t.n_persons == 46
    with pytest.raises(ValueError):  # a misspelt key is refused, not read as "no ignore boxes"
        PersonTruth.model_validate({"clip": "c", "about": "a", "frames": {"1": {"persons": [],
                                                                                "ignored": []}}})


# -- the row plan ------------------------------------------------------------------------------


def _rows(plan: list[PlannedCase]) -> list[tuple[str, int, str | None]]:
    return [(p.backend, p.threads, p.provider) for p in plan]


def test_plan_has_every_bundled_model_and_hog_at_1_and_2_threads_and_says_why_no_ssd(tmp_path: Path) -> None:
    plan, skipped = plan_cases(ssd_model=tmp_path / "ssdlite_mobilenet_v2_coco.onnx")
    assert _rows(plan) == [
        ("onnx", 1, "cpu"), ("onnx:yolox_nano_coco.onnx", 1, "cpu"), ("opencv-hog", 1, None),
        ("onnx", 2, "cpu"), ("onnx:yolox_nano_coco.onnx", 2, "cpu"), ("opencv-hog", 2, None),
    ]
    assert [(p.model, p.score_threshold) for p in plan[:2]] == [
        ("centernet_mnv3_coco.onnx", 0.4), ("yolox_nano_coco.onnx", 0.6)]
    assert plan[1].args == {"model": "asset:yolox_nano_coco.onnx", "threads": 1, "providers": ["cpu"],
                            "score_threshold": 0.6}
    assert len(skipped) == 1 and skipped[0]["model"] == "ssdlite_mobilenet_v2_coco.onnx"
    assert skipped[0]["reason"].startswith("skipped: run make ssd-model")


def test_plan_takes_a_built_ssd_extra_models_each_provider_and_mlserver(tmp_path: Path) -> None:
    ssd = tmp_path / "ssdlite_mobilenet_v2_coco.onnx"
    ssd.write_bytes(b"x")
    plan, skipped = plan_cases(["/m/int8.onnx"], ["cuda", "cpu"], ssd, mlserver=True)
    assert skipped == []
    one = [r for r in _rows(plan) if r[1] == 1]
    onnx = ["onnx", "onnx:yolox_nano_coco.onnx", "onnx:ssdlite_mobilenet_v2_coco.onnx", "onnx:int8.onnx"]
    assert one == [*((b, 1, "cuda") for b in onnx), *((b, 1, "cpu") for b in onnx), ("opencv-hog", 1, None),
                   ("triton-mlserver-http", 1, None), ("triton-mlserver-grpc", 1, None)]
    assert len(plan) == 2 * len(one)
    cuda_ssd = next(p for p in plan if p.provider == "cuda" and "ssdlite" in p.backend)
    assert cuda_ssd.args["providers"] == ["cuda"] and cuda_ssd.args["model"] == str(ssd)


def test_providers_are_the_installed_ones_the_detector_can_ask_for() -> None:
    assert detector_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == (["cpu"], ["azure"])
    assert detector_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                               "CPUExecutionProvider"]) == (["tensorrt", "cuda", "cpu"], [])


def test_table_names_model_provider_accuracy_failures_and_skips() -> None:
    ok = DetectorCase("onnx:yolox_nano_coco.onnx", 1, 12, 30.0, 31.0, 30.5, 33.3, 6.5, model="yolox_nano_coco.onnx",
                      provider="cpu", score_threshold=0.6, recall=0.935, precision=1.0, truth_persons=46,
                      agree_centernet=0.97, agree_model=0.8)
    bad = DetectorCase("onnx", 2, error="ModuleError: boom", model="centernet_mnv3_coco.onnx", provider="cuda")
    text = format_table([ok, bad], [{"backend": "onnx:ssd.onnx", "model": "ssd.onnx",
                                     "reason": "skipped: run make ssd-model"}])
    row = next(line for line in text.splitlines() if line.startswith("onnx:yolox"))
    assert "yolox_nano_coco.onnx" in row and " cpu " in row and "0.935" in row and "97%/80%" in row
    assert "FAILED onnx (centernet_mnv3_coco.onnx, cuda) threads=2: ModuleError: boom" in text
    assert "onnx:ssd.onnx (ssd.onnx): skipped: run make ssd-model" in text


# -- one real row, end to end ------------------------------------------------------------------


@pytest.mark.slow
def test_bench_scores_the_centernet_against_the_labelled_frames(tmp_path: Path, monkeypatch) -> None:
    """The bundled CenterNet, through the detector module as deployed, at 0.4: 40 of the 46
    labelled persons and one false alarm (a stone), as modules/assets/README.md says; a row
    that fails is reported beside it; the JSON keeps its keys and adds the new ones."""
    real_plan = plan_cases

    def one_row(onnx_models, providers, ssd_model, mlserver):
        plan, skipped = real_plan((), ["cpu"], tmp_path / "no-ssd.onnx", False)
        broken = PlannedCase("onnx:missing.onnx", 1, {"model": str(tmp_path / "missing.onnx")},
                             "missing.onnx", "cpu", 0.4)
        # provider None in the plan: the row must say what onnxruntime reports running
        return [dataclasses.replace(plan[0], provider=None), broken], skipped

    monkeypatch.setattr(bench, "plan_cases", one_row)
    out = tmp_path / "det.json"
    lines: list[str] = []
    cases = bench.run_detector_bench(quick=True, json_path=out, echo=lines.append)
    cn = cases[0]
    assert cn.ok and (cn.backend, cn.model, cn.provider) == ("onnx", CENTERNET.file, "cpu")
    assert (cn.truth_hits, cn.truth_false, cn.truth_persons) == (40, 1, 46)
    assert (cn.recall, cn.precision) == (0.87, 0.976)
    assert (cn.agree_centernet, cn.agree_model) == (1.0, 1.0)  # the reference against itself
    assert not cases[1].ok and cases[1].recall is None
    doc = json.loads(out.read_text())
    old = {"backend", "threads", "frames", "ms_p50", "ms_p90", "ms_mean", "fps", "persons_per_frame", "error"}
    new = {"model", "provider", "score_threshold", "recall", "precision", "agree_centernet", "agree_model"}
    assert old | new <= set(doc["results"][0])
    assert doc["bench"] == "detector" and doc["frame_size"] == [768, 576]
    assert doc["truth"]["persons"] == 46
    assert doc["skipped"][0]["reason"].startswith("skipped: run make ssd-model")
    assert any("skipped: run make ssd-model" in line for line in lines)
    assert YOLOX_NANO.score_threshold == 0.6
