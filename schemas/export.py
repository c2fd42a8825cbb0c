"""JSON Schema files for non-Python tools (Node-RED flows, dashboards, other agents).

One file per model in ``schemas/json``, written deterministically (sorted keys, 2-space indent,
trailing newline) so that CI can compare the committed copies with what the code says:
``edgeva schema check`` fails when a model changed and the files were not re-exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from schemas import commands, metrics, state
from schemas.deployment import Deployment
from schemas.frame import FrameHeader

DEFAULT_DIR = Path(__file__).parent / "json"

#: file stem -> model. ``deploy`` is ``deployment`` (the Listing 1 form is not a schema).
MODELS: dict[str, Any] = {
    "deployment": Deployment,
    "cmd_update": commands.UpdateCommand,
    "cmd_start": commands.StartCommand,
    "cmd_stop": commands.StopCommand,
    "cmd_remove": commands.RemoveCommand,
    "cmd_status": commands.StatusCommand,
    "cmd_metrics": commands.MetricsCommand,
    "reply": commands.Reply,
    "state": state.DeviceState,
    "metrics_tenant": metrics.TenantMetrics,
    "metrics_device": metrics.DeviceMetrics,
    "frame_header": FrameHeader,
}


def render(model: Any) -> str:
    """The exact text of a model's schema file."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        schema = model.model_json_schema()
    else:
        schema = TypeAdapter(model).json_schema()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> content, for every exported model."""
    return {f"{stem}.json": render(model) for stem, model in MODELS.items()}


def export_json_schemas(directory: str | Path = DEFAULT_DIR) -> list[Path]:
    """Write every schema file into ``directory`` (created if needed); return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in expected_files().items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def check_json_schemas(directory: str | Path = DEFAULT_DIR) -> list[str]:
    """Names of the files in ``directory`` that differ from the models: changed, missing, or
    stale (a ``.json`` no model exports any more). Empty when all agree."""
    out = Path(directory)
    expected = expected_files()
    bad = []
    for name, text in expected.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            bad.append(name)
    if out.is_dir():
        bad += [p.name for p in out.glob("*.json") if p.name not in expected]
    return sorted(bad)
