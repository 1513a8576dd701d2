"""The training loop: truncated BPTT over windows, validation, early stopping, checkpoints.

Two ways to cut long episodes into windows (``train.mode``):

- ``stateful`` (Keras ``stateful=True``): a batch of episodes is walked window by
  window; the state at the end of one window, detached from the graph, is the
  initial state of the next. Every window is one optimiser step.
- ``burn_in``: every window starts from a zero state that is warmed up by running
  the ``burn_in`` steps before it without gradient; nothing is carried.

``window = 0`` trains on whole episodes (one window each). Validation and test
always run whole episodes from a zero state, exactly as ``serve`` steps a stream.

Reproducible: the initial weights come from ``torch.manual_seed(seed)``, the
batch order of epoch ``e`` from ``numpy.random.default_rng([seed, e])`` and the
learning rate from the epoch number, so a run resumed from ``last.pt`` (which
also holds the optimiser and torch RNG state) continues exactly as if it had not
stopped. Checkpoints hold only tensors, dicts, lists, str, int, float and bool:
they load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lstm_stream.core.errors import TrainingError
from lstm_stream.core.progress import NullProgress, Progress
from lstm_stream.train.checkpoint import RunState, restore, save_checkpoint
from lstm_stream.train.config import TrainConfig
from lstm_stream.train.data import Dataset, SequenceSet
from lstm_stream.train.distributed import Distributed
from lstm_stream.train.metrics import plot_metrics, write_metrics
from lstm_stream.train.model import ModelShape, SequenceModel, State

log = logging.getLogger(__name__)

EVAL_BATCH = 256


@dataclass
class Batch:
    """Episodes padded to a common length; ``mask`` says which steps carry a loss."""

    x: torch.Tensor  # (B, T, F) float32, data units
    y: torch.Tensor  # classification (B, T) int64; regression (B, T, O) normalised
    mask: torch.Tensor  # (B, T) float32: 1 where the step is scored
    y_raw: torch.Tensor | None = None  # regression (B, T, O) in data units
    naive: torch.Tensor | None = None  # regression (B, T, O): "tomorrow equals today"


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run produced."""

    run_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict[str, Any]]
    test: dict[str, float]
    best_epoch: int
    seconds: float
    model: SequenceModel = field(repr=False)


# ------------------------------------------------------------------------------ setup


def build_model(config: TrainConfig, dataset: Dataset) -> SequenceModel:
    """A fresh model with seeded initial weights and the training split's statistics."""
    torch.manual_seed(config.train.seed)
    add = (dataset.feature_names.index(config.model.add_input)
           if config.model.add_input else -1)
    if config.model.add_input and dataset.n_outputs < 1:
        raise TrainingError("model.add_input needs a regression target.")
    model = SequenceModel(config.model, ModelShape(dataset.n_features, dataset.n_outputs, add))
    x = np.concatenate(dataset.train.x)  # (steps, F)
    std = x.std(axis=0)
    # A constant feature (e.g. an always-blank pixel column) would divide by zero.
    std = np.where(std < 1e-6, 1.0, std)
    y_mean = y_std = None
    if dataset.task == "regression":
        y = np.concatenate([_delta(yy, xx, add) for yy, xx in
                            zip(dataset.train.y, dataset.train.x, strict=True)])
        ys = y.std(axis=0)
        y_mean, y_std = torch.from_numpy(y.mean(axis=0)), torch.from_numpy(
            np.where(ys < 1e-6, 1.0, ys))
    model.set_normalization(torch.from_numpy(x.mean(axis=0)), torch.from_numpy(std),
                            y_mean, y_std)
    return model


def _delta(y: np.ndarray, x: np.ndarray, add: int) -> np.ndarray:
    """Regression target minus the added input: what the network itself predicts."""
    return y - x[:, add:add + 1] if add >= 0 else y


def make_batch(model: SequenceModel, data: SequenceSet, idx: list[int] | np.ndarray,
               classify_on: str) -> Batch:
    """Pad episodes ``idx`` of ``data`` to their longest; mask the steps that are scored."""
    xs = [data.x[i] for i in idx]
    length = max(len(a) for a in xs)
    feats = xs[0].shape[1]
    x = np.zeros((len(xs), length, feats), np.float32)
    mask = np.zeros((len(xs), length), np.float32)
    for b, a in enumerate(xs):
        x[b, :len(a)] = a
        if model.config.task == "classification" and classify_on == "last":
            mask[b, len(a) - 1] = 1.0
        else:
            mask[b, :len(a)] = 1.0
    if model.config.task == "classification":
        y = np.zeros((len(xs), length), np.int64)
        for b, i in enumerate(idx):
            y[b, :len(data.y[i])] = data.y[i]
        return Batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask))
    outs = data.y[idx[0]].shape[1]
    y_raw = np.zeros((len(xs), length, outs), np.float32)
    naive = np.zeros_like(y_raw) if data.naive is not None else None
    for b, i in enumerate(idx):
        y_raw[b, :len(data.y[i])] = data.y[i]
        if naive is not None and data.naive is not None:
            naive[b, :len(data.naive[i])] = data.naive[i]
    add = model.shape.add_input_index
    delta = y_raw - x[:, :, add:add + 1] if add >= 0 else y_raw
    y_norm = (torch.from_numpy(delta) - model.y_mean) / model.y_std  # (B, T, O)
    return Batch(torch.from_numpy(x), y_norm, torch.from_numpy(mask), torch.from_numpy(y_raw),
                 torch.from_numpy(naive) if naive is not None else None)


def rows(batch: Batch, sl: slice) -> Batch:
    """The rows ``sl`` of a batch (a rank's shard)."""
    pick = [None if t is None else t[sl] for t in (batch.y_raw, batch.naive)]
    return Batch(batch.x[sl], batch.y[sl], batch.mask[sl], pick[0], pick[1])


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based), a pure function of the config."""
    t = config.train
    if t.schedule == "cosine":
        return t.lr * 0.5 * (1 + math.cos(math.pi * epoch / t.epochs))
    if t.schedule == "step":
        return t.lr * t.gamma ** (epoch // t.step_epochs)
    return t.lr


# --------------------------------------------------------------------------- the loop


def step_loss(model: SequenceModel, out: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Sum of per-step losses at the scored steps; ``out`` (B, T, O) normalised units."""
    if model.config.task == "classification":
        per = F.cross_entropy(out.reshape(-1, out.shape[-1]), batch.y.reshape(-1),
                              reduction="none").reshape(batch.mask.shape)  # (B, T)
    elif model.config.loss == "huber":
        per = F.huber_loss(out, batch.y, reduction="none").mean(dim=-1)
    else:
        per = F.mse_loss(out, batch.y, reduction="none").mean(dim=-1)
    return (per * batch.mask).sum()


def train_batch(model: SequenceModel, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                config: TrainConfig, batch: Batch, local: Batch, world: int) -> float:
    """Walk one batch window by window; one optimiser step per scored window.

    ``batch`` is the global batch (used to count scored steps, identical on every
    rank), ``local`` this rank's rows. Dividing the local sum by the global count,
    times ``world`` (DDP averages gradients over ranks), makes the gradient the
    mean over the global batch whatever the number of ranks.
    """
    t = config.train
    length = batch.x.shape[1]
    window = t.window or length
    state: State | None = None
    total, count = 0.0, 0.0
    for t0 in range(0, length, window):
        sl = slice(t0, t0 + window)
        n_global = float(batch.mask[:, sl].sum())
        win = Batch(local.x[:, sl], local.y[:, sl], local.mask[:, sl])
        if t.mode == "burn_in":
            state = _burn_in(model, local.x, t0, t.burn_in)
            if n_global == 0:
                continue
        elif n_global == 0:  # nothing scored here: only carry the state forward
            with torch.no_grad():
                _, state = model.forward_normalized(win.x, state)
            continue
        out, new_state = net(win.x, state)
        loss_sum = step_loss(model, out, win)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * (world / n_global)).backward()  # type: ignore[no-untyped-call]
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        state = tuple(s.detach() for s in new_state)  # TBPTT: carry values, cut the graph
        total += float(loss_sum.detach())
        count += float(win.mask.sum())
    return total / max(count, 1.0)


def _burn_in(model: SequenceModel, x: torch.Tensor, t0: int, burn_in: int) -> State | None:
    """The state after running steps ``[t0 - burn_in, t0)`` from zero, without gradient."""
    start = max(0, t0 - burn_in)
    if start == t0:
        return None
    with torch.no_grad():
        _, state = model.forward_normalized(x[:, start:t0])
    return state


class _Wrapper(torch.nn.Module):
    """Routes ``net(x, state)`` to ``forward_normalized`` so DDP hooks the right call."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        return self.model.forward_normalized(x, state)


@torch.no_grad()
def evaluate(model: SequenceModel, data: SequenceSet, classify_on: str) -> dict[str, float]:
    """Metrics over whole episodes run from a zero state, as served."""
    if len(data) == 0:
        return {}
    model.eval()
    loss = correct = abs_err = sq_err = naive_abs = naive_sq = n = 0.0
    for start in range(0, len(data), EVAL_BATCH):
        batch = make_batch(model, data, list(range(start, min(start + EVAL_BATCH, len(data)))),
                           classify_on)
        out, _ = model.forward_normalized(batch.x)  # (B, T, O)
        loss += float(step_loss(model, out, batch))
        m = batch.mask
        n += float(m.sum())
        if model.config.task == "classification":
            correct += float(((out.argmax(-1) == batch.y).float() * m).sum())
            continue
        assert batch.y_raw is not None
        err = model.denormalize(out, batch.x) - batch.y_raw  # (B, T, O) data units
        abs_err += float((err.abs().mean(-1) * m).sum())
        sq_err += float((err.pow(2).mean(-1) * m).sum())
        if batch.naive is not None:
            nerr = batch.naive - batch.y_raw
            naive_abs += float((nerr.abs().mean(-1) * m).sum())
            naive_sq += float((nerr.pow(2).mean(-1) * m).sum())
    model.train()
    metrics = {"loss": loss / n}
    if model.config.task == "classification":
        metrics["accuracy"] = correct / n
    else:
        metrics |= {"mae": abs_err / n, "rmse": math.sqrt(sq_err / n)}
        if data.naive is not None:
            metrics |= {"naive_mae": naive_abs / n, "naive_rmse": math.sqrt(naive_sq / n)}
    return metrics


def fit(config: TrainConfig, dataset: Dataset, run_dir: Path, *,
        progress: Progress | None = None, resume: Path | None = None,
        dist: Distributed | None = None, until_epoch: int | None = None) -> TrainResult:
    """Train ``config`` on ``dataset``, writing checkpoints and metrics into ``run_dir``.

    ``until_epoch`` stops after that many epochs in all, as an interruption would
    (the schedule still follows ``train.epochs``); ``resume`` continues such a run.
    """
    progress = progress or NullProgress()
    dist = dist or Distributed.single()
    started = time.monotonic()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    model = build_model(config, dataset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)
    state = RunState()
    if resume is not None:
        state = restore(resume, config, model, optimizer)
        log.info("resumed from %s after epoch %d", resume, state.epoch)
    net = dist.wrap(_Wrapper(model))
    paths = RunPaths(run_dir)
    if dist.is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)
    verify_x = _verify_sequences(dataset, config.export.verify_sequences)
    stop = min(config.train.epochs, until_epoch or config.train.epochs)
    for epoch in range(state.epoch, stop):
        if config.train.patience and state.bad_epochs >= config.train.patience:
            log.info("early stop: no better validation loss for %d epochs", state.bad_epochs)
            break
        record = _one_epoch(config, dataset, model, net, optimizer, epoch, dist, progress)
        state.history.append(record)
        state.epoch = epoch + 1
        _track_best(state, record, model)
        if dist.is_writer:
            save_checkpoint(paths.last, model, config, dataset, state, optimizer, verify_x)
            save_checkpoint(paths.best, _best_model(model, state), config, dataset, state,
                            None, verify_x)
            write_metrics(paths.metrics, state.history)
    progress.close()
    best = _best_model(model, state)
    test = evaluate(best, dataset.test, config.model.classify_on) if len(dataset.test) else {}
    state.test = test
    if dist.is_writer:
        save_checkpoint(paths.best, best, config, dataset, state, None, verify_x)
        save_checkpoint(paths.last, model, config, dataset, state, optimizer, verify_x)
        plot_metrics(paths.plot, state.history, dataset.task)
        (run_dir / "summary.json").write_text(json.dumps(
            {"test": test, "best_epoch": state.best_epoch, "epochs": state.epoch,
             "config_sha256": config.digest()}, indent=2) + "\n")
    dist.barrier()
    return TrainResult(run_dir, paths.best, paths.last, state.history, test, state.best_epoch,
                       time.monotonic() - started, best)


def _one_epoch(config: TrainConfig, dataset: Dataset, model: SequenceModel,
               net: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
               dist: Distributed, progress: Progress) -> dict[str, Any]:
    lr = learning_rate(config, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    tick = time.monotonic()
    order = np.random.default_rng([config.train.seed, epoch]).permutation(len(dataset.train))
    bs = config.train.batch_size
    batches = [order[i:i + bs] for i in range(0, len(order), bs)]
    if len(batches) > 1 and len(batches[-1]) < dist.world:  # every rank needs a row
        batches[-2:] = [np.concatenate(batches[-2:])]
    progress.start(f"epoch {epoch + 1}/{config.train.epochs}", total=len(batches))
    model.train()
    losses = []
    for idx in batches:
        batch = make_batch(model, dataset.train, idx, config.model.classify_on)
        local = rows(batch, slice(dist.rank, None, dist.world))
        losses.append(train_batch(model, net, optimizer, config, batch, local, dist.world))
        progress.advance(1, f"loss {losses[-1]:.4f}")
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr,
                              "train_loss": dist.mean(float(np.mean(losses)))}
    val = evaluate(model, dataset.val, config.model.classify_on)
    record |= {f"val_{k}": v for k, v in val.items()}
    record["seconds"] = time.monotonic() - tick
    log.info("epoch %d: %s", epoch + 1, " ".join(
        f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    return record


@dataclass
class RunPaths:
    run_dir: Path

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.run_dir / "metrics.png"


def _track_best(state: RunState, record: dict[str, Any], model: SequenceModel) -> None:
    # Without a validation split the last epoch is the best one.
    score = record.get("val_loss", record["train_loss"])
    if score < state.best_loss:
        state.best_loss, state.best_epoch, state.bad_epochs = score, record["epoch"], 0
        state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        state.bad_epochs += 1


def _best_model(model: SequenceModel, state: RunState) -> SequenceModel:
    best = SequenceModel(model.config, model.shape)
    best.load_state_dict(state.best_weights if state.best_weights is not None
                         else model.state_dict())
    best.eval()
    return best


def _verify_sequences(dataset: Dataset, n: int) -> list[np.ndarray]:
    """``n`` episodes kept in the checkpoint for export's self-check: the test split
    first, then validation, then training when the held-out splits are short."""
    picked: list[np.ndarray] = []
    taken: dict[str, int] = {}
    for name, split in (("test", dataset.test), ("val", dataset.val), ("train", dataset.train)):
        more = split.x[: n - len(picked)]
        picked += [np.ascontiguousarray(a) for a in more]
        taken[name] = len(more)
    where = ", ".join(f"{count} {name}" for name, count in taken.items() if count)
    if len(picked) < n:
        log.warning("export check: export.verify_sequences asks for %d sequences but the data "
                    "has %d; the export is checked on all of them (%s)", n, len(picked), where)
    else:
        log.info("export check: %d sequences kept for the export's self-check (%s)", n, where)
    return picked
