"""onnxruntime execution providers by short name: which to ask for, which one runs.

The detector's ``onnx`` backend and reid's ``onnx`` embedder take ``providers``, an ordered
list of short names (most preferred first), and ``provider_fallback``:

- ``cpu`` (always installed), ``openvino`` (Intel CPUs/iGPUs/NPUs: the
  ``onnxruntime-openvino`` wheel), ``cuda`` and ``tensorrt`` (NVIDIA: ``onnxruntime-gpu``, with
  the CUDA/TensorRT libraries), ``coreml`` (macOS), ``directml`` (Windows), ``rocm`` (AMD).
- Every provider named must be installed in this onnxruntime wheel, else deploying fails with
  an error naming the installed ones, **unless** the list ends in ``cpu`` or
  ``provider_fallback`` is true: then the missing ones are skipped (logged) and the next
  installed one runs. No silent CPU fallback otherwise: a deployment written for a GPU that
  lands on a box without one says so at deploy instead of running 20x slower.
- onnxruntime itself runs the nodes the first provider cannot on the next ones of the list.
- Which provider runs is what onnxruntime reports for the loaded session (a provider that is
  installed but cannot start, e.g. CUDA without a GPU, makes onnxruntime fall back on its own:
  that too is an error unless fallback is allowed). It is logged at setup and published in the
  module's metrics as the counter ``provider_<name>`` = 1.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

#: Short name -> onnxruntime's provider name.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}
_SHORT = {v: k for k, v in PROVIDERS.items()}
ProviderName = Literal["cpu", "openvino", "cuda", "tensorrt", "coreml", "directml", "rocm"]


def providers_field() -> Any:
    """The ``providers`` arg, as both the detector's onnx backend and reid declare it."""
    return Field(["cpu"], min_length=1, max_length=len(PROVIDERS),
                 description="onnxruntime execution providers, most preferred first (cpu, openvino, "
                 "cuda, tensorrt, coreml, directml, rocm); one not installed is an error naming the "
                 "installed ones unless the list ends in cpu or provider_fallback is true",
                 examples=[["cuda", "cpu"]])


def fallback_field() -> Any:
    """The ``provider_fallback`` arg (see the module docstring)."""
    return Field(False, description="skip providers of the list that are not installed (or fail to "
                 "start) instead of refusing to deploy; a list ending in cpu allows it too")


class ProviderError(ValueError):
    """The providers asked for cannot run here; the message names the installed ones."""


def short(name: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (another: its name without the suffix, lower case)."""
    return _SHORT.get(name, name.removesuffix("ExecutionProvider").lower())


def choose(wanted: list[str], fallback: bool, installed: list[str]) -> list[str]:
    """The onnxruntime provider names to open a session with, in order.

    ``wanted``: short names, most preferred first; ``installed``: onnxruntime's
    ``get_available_providers()``. Missing ones are an error unless ``fallback`` or the list
    ends in ``cpu`` (then they are left out)."""
    if len(set(wanted)) != len(wanted):
        raise ProviderError(f"providers {wanted} names one twice")
    unknown = [w for w in wanted if w not in PROVIDERS]
    if unknown:
        raise ProviderError(f"unknown providers {unknown} (known: {', '.join(PROVIDERS)})")
    allow = fallback or wanted[-1] == "cpu"
    have = [w for w in wanted if PROVIDERS[w] in installed]
    missing = [w for w in wanted if PROVIDERS[w] not in installed]
    names = ", ".join(short(i) for i in installed)
    if missing and not allow:
        raise ProviderError(f"execution provider{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"not installed in this onnxruntime (installed: {names}); install the "
                            "wheel that has it, or end providers with cpu / set provider_fallback: "
                            "true to run on the next one")
    if not have:  # only with fallback allowed (else the check above refused): cpu is always there
        have = ["cpu"]
    return [PROVIDERS[w] for w in have]


def running(session: Any, asked: list[str], fallback: bool, wanted: list[str], log: logging.Logger,
            what: str) -> str:
    """The short name of the provider a loaded session runs on; an error when onnxruntime fell
    back from the first one asked for on its own (it could not start) and fallback is not allowed."""
    got = session.get_providers()
    first = got[0] if got else "CPUExecutionProvider"
    if first != asked[0] and not (fallback or wanted[-1] == "cpu"):
        raise ProviderError(f"execution provider {short(asked[0])} did not start (onnxruntime runs "
                            f"{', '.join(short(g) for g in got)}); see onnxruntime's log for why, or "
                            "end providers with cpu / set provider_fallback: true")
    skipped = [w for w in wanted if PROVIDERS[w] not in got]
    if skipped:
        log.warning("%s: providers %s not available here: running on %s", what, skipped, short(first))
    return short(first)
