"""What ``lstm-stream info MODEL`` shows: the model's contract, shapes, mapping and metadata."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from lstm_stream.core.model.contract import (
    META_CELL,
    META_FEATURE_NAMES,
    META_NORMALIZATION,
    META_OUTPUT_NAMES,
    META_PREPROCESSING,
    PortSpec,
    load_contract,
)
from lstm_stream.core.model.names import ModelIO

_SHOWN_ELSEWHERE = {META_FEATURE_NAMES, META_OUTPUT_NAMES, META_NORMALIZATION, META_CELL,
                    META_PREPROCESSING}
_LAYOUTS = {"bf": "[batch, {n}]", "b1f": "[batch, 1, {n}]", "1bf": "[1, batch, {n}]"}


def describe(path: str | Path, io: ModelIO | None = None) -> dict[str, Any]:
    """A JSON-ready description of the model at ``path`` (raises if it cannot be served)."""
    contract = load_contract(path, io)
    graph = contract.graph
    assert graph is not None
    ops = Counter(node.op_type for node in graph.nodes)
    params = sum(int(a.size) for a in graph.initializers.values())
    return {
        "path": str(contract.path),
        "size_bytes": Path(contract.path).stat().st_size,
        "external_data": {name: len(blob) for name, blob in contract.external.items()},
        "sha256": contract.sha256,
        "contract": "ok",
        "cell": contract.cell,
        "dtype": contract.dtype,
        "fixed_batch": contract.fixed_batch,
        "features": contract.n_features,
        "feature_names": list(contract.feature_names) if contract.feature_names else None,
        "outputs": contract.n_outputs,
        "output_names": list(contract.output_names) if contract.output_names else None,
        "x": _port(contract.x),
        "y": _port(contract.y),
        "extras": [_port(e) for e in contract.extras],
        "states": [{"input": s.input, "output": s.output, "layers": s.layers,
                    "hidden": s.hidden,
                    "layout": "batch_layers_hidden" if s.batch_first else "layers_batch_hidden"}
                   for s in contract.states],
        "mapping": list(contract.decided),
        "normalization": contract.normalization,
        "preprocessing": _preprocessing(contract.metadata, contract.normalization),
        "parameters": params,
        "producer": f"{graph.producer_name} {graph.producer_version}".strip(),
        "opset": graph.opset,
        "operators": dict(sorted(ops.items())),
        "metadata": {k: v for k, v in sorted(contract.metadata.items())
                     if k not in _SHOWN_ELSEWHERE},
    }


def _port(port: PortSpec) -> dict[str, Any]:
    return {"name": port.name, "width": port.width, "layout": port.layout}


def _preprocessing(metadata: dict[str, str], normalization: dict[str, Any] | None) -> list[str]:
    """What the graph does to the raw values before the recurrent layers."""
    steps: list[str] = []
    with contextlib.suppress(json.JSONDecodeError, TypeError):
        declared = json.loads(metadata.get(META_PREPROCESSING, "[]"))
        steps = [str(s) for s in declared] if isinstance(declared, list) else []
    if not steps and normalization:
        steps = ["(x - mean) / std"]
    return steps


def render(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`describe`'s result."""
    external = info["external_data"]
    batch = ("fixed 1: one message per call, batching off" if info["fixed_batch"] == 1
             else "dynamic")
    lines = [
        f"model      {info['path']}",
        f"size       {info['size_bytes']:,} bytes, {info['parameters']:,} parameters"
        + (", data in " + ", ".join(f"{n} ({b:,} bytes)" for n, b in external.items())
           if external else ""),
        f"sha256     {info['sha256']}",
        f"contract   {info['contract']} (servable by `lstm-stream serve`)",
        f"cell       {info['cell']}, {info['dtype']}, batch {batch}",
        f"input      {_shape(info['x'], 'x')}" + _names(info["feature_names"]),
        f"output     {_shape(info['y'], 'y')}" + _names(info["output_names"]),
    ]
    for extra in info["extras"]:
        lines.append(f"extra      {_shape(extra)}  (published as extra.{extra['name']})")
    for s in info["states"]:
        shape = ("[batch, layers={layers}, hidden={hidden}]" if s["layout"] ==
                 "batch_layers_hidden" else "[layers={layers}, batch, hidden={hidden}]")
        lines.append(f"state      {s['input']} -> {s['output']} " + shape.format(**s))
    for line in info["mapping"]:
        lines.append(f"mapping    {line}")
    for step in info["preprocessing"]:
        norm = info["normalization"] or {}
        where = " (folded into the graph)" if norm.get("folded") else ""
        lines.append(f"applies    {step}{where if step.startswith('(x - mean)') else ''}")
    lines.append(f"producer   {info['producer'] or 'unknown'}, opset "
                 + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in info["opset"].items()))
    lines.append("operators  " + ", ".join(f"{k} x{v}" for k, v in info["operators"].items()))
    for key, value in info["metadata"].items():
        lines.append(f"meta       {key} = {_short(value)}")
    return "\n".join(lines)


def _shape(port: dict[str, Any], role: str = "") -> str:
    """``obs [batch, 1, 10] as x``: the model's name and shape, and the part it plays."""
    shape = f"{port['name']} " + _LAYOUTS[port["layout"]].format(n=port["width"])
    return shape + (f" as {role}" if role and port["name"] != role else "")


def _names(names: list[str] | None) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return f"  ({shown})"


def _short(value: str, limit: int = 100) -> str:
    with contextlib.suppress(json.JSONDecodeError, TypeError):
        value = json.dumps(json.loads(value))
    return value if len(value) <= limit else value[: limit - 3] + "..."
