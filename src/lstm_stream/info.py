"""What ``lstm-stream info MODEL`` shows: the model's contract, shapes and metadata."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from lstm_stream.contract import (
    META_CELL,
    META_FEATURE_NAMES,
    META_NORMALIZATION,
    META_OUTPUT_NAMES,
    load_contract,
)

_SHOWN_ELSEWHERE = {META_FEATURE_NAMES, META_OUTPUT_NAMES, META_NORMALIZATION, META_CELL}


def describe(path: str | Path) -> dict[str, Any]:
    """A JSON-ready description of the model at ``path`` (raises if it breaks the contract)."""
    contract = load_contract(path)
    graph = contract.graph
    assert graph is not None
    ops = Counter(node.op_type for node in graph.nodes)
    params = sum(int(a.size) for a in graph.initializers.values())
    return {
        "path": str(contract.path),
        "size_bytes": Path(contract.path).stat().st_size,
        "sha256": contract.sha256,
        "contract": "ok",
        "cell": contract.cell,
        "features": contract.n_features,
        "feature_names": list(contract.feature_names) if contract.feature_names else None,
        "outputs": contract.n_outputs,
        "output_names": list(contract.output_names) if contract.output_names else None,
        "states": [{"input": s.input, "output": s.output, "layers": s.layers,
                    "hidden": s.hidden} for s in contract.states],
        "normalization": contract.normalization,
        "parameters": params,
        "producer": f"{graph.producer_name} {graph.producer_version}".strip(),
        "opset": graph.opset,
        "operators": dict(sorted(ops.items())),
        "metadata": {k: v for k, v in sorted(contract.metadata.items())
                     if k not in _SHOWN_ELSEWHERE},
    }


def render(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`describe`'s result."""
    lines = [
        f"model      {info['path']}",
        f"size       {info['size_bytes']:,} bytes, {info['parameters']:,} parameters",
        f"sha256     {info['sha256']}",
        f"contract   {info['contract']} (servable by `lstm-stream serve`)",
        f"cell       {info['cell']}",
        f"input      x [batch, {info['features']}]" + _names(info["feature_names"]),
        f"output     y [batch, {info['outputs']}]" + _names(info["output_names"]),
    ]
    for s in info["states"]:
        lines.append(f"state      {s['input']} -> {s['output']} "
                     f"[layers={s['layers']}, batch, hidden={s['hidden']}]")
    norm = info["normalization"]
    if norm:
        where = "folded into the graph" if norm.get("folded") else "applied by the graph"
        lines.append(f"normalize  (x - mean) / std, {where}")
    lines.append(f"producer   {info['producer'] or 'unknown'}, opset "
                 + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in info["opset"].items()))
    lines.append("operators  " + ", ".join(f"{k} x{v}" for k, v in info["operators"].items()))
    for key, value in info["metadata"].items():
        lines.append(f"meta       {key} = {_short(value)}")
    return "\n".join(lines)


def _names(names: list[str] | None) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return f"  ({shown})"


def _short(value: str, limit: int = 100) -> str:
    with contextlib.suppress(json.JSONDecodeError, TypeError):
        value = json.dumps(json.loads(value))
    return value if len(value) <= limit else value[: limit - 3] + "..."
