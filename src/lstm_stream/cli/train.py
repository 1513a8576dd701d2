"""``lstm-stream train`` and ``lstm-stream export``: thin handlers over the training library.

The training modules (torch, and mcap for logs) are imported by the handlers
only, under :func:`_train_extra`, so that ``lstm-stream --help`` works on an
edge install without the ``[train]`` extra, and a missing extra is one clear
error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from lstm_stream.cli.extras import needs_extra
from lstm_stream.cli.progress import TerminalProgress
from lstm_stream.core.errors import TrainingError
from lstm_stream.train.config import load_train_config

TRAIN_EXTRA = ("torch", "mcap", "sklearn", "onnx", "onnxscript")  # what [train] installs

log = logging.getLogger(__name__)

TRAIN_EPILOG = """\
examples:
  lstm-stream train configs/digits.toml
  lstm-stream train configs/forecast.toml --set train.epochs=5 --out runs/quick
  lstm-stream train configs/digits.toml --resume runs/digits/last.pt --set train.epochs=60
  torchrun --nproc_per_node 2 -m lstm_stream train configs/digits.toml

Writes <out>/best.pt, last.pt, metrics.jsonl, metrics.png, summary.json and
(unless export.enabled = false) the verified ONNX step model <out>/model.onnx.
Config reference: docs/training.md.
"""


def add_commands(sub: Any) -> None:
    """Add ``train`` and ``export`` to the ``lstm-stream`` command."""
    p = sub.add_parser("train", help="train an LSTM/GRU from a TOML config and export it",
                       description="Train a model, checkpoint it, and export a verified ONNX "
                       "step model.", epilog=TRAIN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (TOML), e.g. configs/digits.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="override any config option; repeatable")
    p.add_argument("--resume", metavar="CKPT", help="continue from a last.pt checkpoint")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    p.set_defaults(handler=_train)

    e = sub.add_parser("export", help="export a checkpoint as a verified ONNX step model",
                       description="Write the ONNX step model of a checkpoint after checking "
                       "it against PyTorch through onnxruntime and the numpy backend.")
    e.add_argument("checkpoint", help="checkpoint written by `lstm-stream train` (best.pt)")
    e.add_argument("-o", "--output", required=True, metavar="MODEL.onnx", help="where to write")
    e.add_argument("--tolerance", type=float, help="parity tolerance (default: the "
                   "checkpoint's export.tolerance, 1e-5)")
    e.set_defaults(handler=_export)


def _train_extra(hint: str) -> AbstractContextManager[None]:
    """Around the import of modules of ``lstm_stream.train``: ``hint`` as the error when the
    [train] extra (torch above all) is missing."""
    return needs_extra(TRAIN_EXTRA, lambda _missing: TrainingError(hint))


def _train(args: argparse.Namespace) -> int:
    config = load_train_config(args.config, args.overrides)  # fails before torch is loaded
    hint = "Training needs torch: pip install torch==2.13.0 && pip install -e '.[train]'."
    with _train_extra(hint):
        from lstm_stream.train.data import load_dataset
        from lstm_stream.train.distributed import Distributed
        from lstm_stream.train.export import export_checkpoint
        from lstm_stream.train.loop import fit

    log.info("config: %s", json.dumps(config.as_dict(), sort_keys=True))
    dataset = load_dataset(config)  # every data check runs before training starts
    dist = Distributed.from_environment()
    try:
        run_dir = Path(args.out or Path("runs") / config.name)
        result = fit(config, dataset, run_dir, progress=TerminalProgress(),
                     resume=Path(args.resume) if args.resume else None, dist=dist)
        if not dist.is_writer:
            return 0
        print(f"trained {len(result.history)} epochs in {result.seconds:.1f} s; best epoch "
              f"{result.best_epoch}; checkpoints in {run_dir}")
        print("test: " + _fmt(result.test))
        if config.export.enabled:
            onnx_path = Path(config.export.path or run_dir / "model.onnx")
            worst = export_checkpoint(result.best_path, onnx_path)
            print(f"exported {onnx_path} (max |step model - PyTorch| = {worst:.1e})")
    finally:
        dist.close()
    return 0


def _fmt(metrics: dict[str, float]) -> str:
    text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    if "naive_mae" in metrics:
        text += (f"   (model MAE {metrics['mae']:.4f} vs naive 'tomorrow equals today' "
                 f"{metrics['naive_mae']:.4f})")
    return text or "(no test split)"


def _export(args: argparse.Namespace) -> int:
    with _train_extra("Export needs torch: pip install torch==2.13.0."):
        from lstm_stream.train.export import export_checkpoint
    worst = export_checkpoint(Path(args.checkpoint), Path(args.output), args.tolerance)
    print(f"exported {args.output} (max |step model - PyTorch| = {worst:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit("run as: lstm-stream train|export")
