"""Export a PyTorch recurrent policy to ONNX the way users do, with either exporter.

    python tools/export_policy.py -o policy.onnx                      # dynamo (default)
    python tools/export_policy.py -o policy.onnx --exporter legacy
    python tools/export_policy.py -o policy.onnx --cell gru --dtype float16
    python tools/export_policy.py -o nonames.onnx --no-names          # a first try

The policy is tools/policies.py (``forward(obs, h0, c0) -> (action, value, hn,
cn)``, batch-first ``obs`` of one step, a value head), seeded, so that
``lstm-stream check policy.onnx --io y=action --torch tools/policies.py:lstm_policy``
compares with exactly the exported module. docs/model-contract.md explains each
argument of the two ``torch.onnx.export`` calls below; copy them for your own policy.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import policies

LSTM_NAMES = (["obs", "h0", "c0"], ["action", "value", "hn", "cn"])
GRU_NAMES = (["obs", "h0"], ["action", "value", "hn"])


def names(module: torch.nn.Module) -> tuple[list[str], list[str]]:
    return LSTM_NAMES if isinstance(module, policies.LstmPolicy) else GRU_NAMES


def samples(module: torch.nn.Module, batch: int) -> tuple[torch.Tensor, ...]:
    """Example inputs: obs (batch, 1, features) and zero states (layers, batch, hidden)."""
    dtype = next(module.parameters()).dtype
    obs = torch.randn(batch, 1, policies.FEATURES, dtype=dtype)
    state = torch.zeros(policies.LAYERS, batch, policies.HIDDEN, dtype=dtype)
    return (obs, state, state.clone()) if isinstance(module, policies.LstmPolicy) else (
        obs, state)


def export_legacy(module: torch.nn.Module, path: Path, *, dynamic: bool = True,
                  batch: int = 1) -> Path:
    """The TorchScript exporter: ``dynamic_axes`` makes the batch dynamic (axis 0 of
    obs and the heads, axis 1 of torch's [layers, batch, hidden] states)."""
    inputs, outputs = names(module)
    axes = {n: {1 if n.startswith(("h", "c")) else 0: "batch"} for n in inputs + outputs}
    torch.onnx.export(module, samples(module, batch), str(path), dynamo=False,
                      input_names=inputs, output_names=outputs,
                      dynamic_axes=axes if dynamic else None)
    return path


def export_dynamo(module: torch.nn.Module, path: Path) -> Path:
    """torch's default exporter: a sample with batch 2 (torch.export specialises size-1
    dimensions) and ``dynamic_shapes`` naming the batch axes; the weights go to
    ``<path>.data`` beside the model (external data)."""
    inputs, outputs = names(module)
    batch = torch.export.Dim("batch", min=1)
    shapes: dict[str, Any] = {n: {1 if n.startswith(("h", "c")) else 0: batch} for n in inputs}
    torch.onnx.export(module, samples(module, 2), str(path), input_names=inputs,
                      output_names=outputs, dynamic_shapes=shapes)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file")
    p.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--fixed-batch", type=int, metavar="N",
                   help="legacy exporter without dynamic_axes, batch N (what forgetting "
                   "them gives)")
    p.add_argument("--no-names", action="store_true",
                   help="dynamo exporter with a batch-2 sample and nothing else: no names, "
                   "no dynamic_shapes (what a first try gives)")
    args = p.parse_args(argv)
    module: torch.nn.Module = (policies.lstm_policy() if args.cell == "lstm"
                               else policies.gru_policy())
    if args.dtype == "float16":
        module = module.half()
    if args.no_names:
        torch.onnx.export(module, samples(module, 2), str(args.output))
    elif args.fixed_batch:
        export_legacy(module, args.output, dynamic=False, batch=args.fixed_batch)
    elif args.exporter == "legacy":
        export_legacy(module, args.output)
    else:
        export_dynamo(module, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
