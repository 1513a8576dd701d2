"""The trained network: normalisation, a recurrent stack (LSTM or GRU), and a head.

Everything the exported step model needs is a buffer or parameter of this
module, so a checkpoint's ``state_dict`` alone rebuilds it: the input
normalisation (mean and std of the training split), the target normalisation
for regression (the loss is computed in normalised units, the output is in the
data's units), and the index of the input added to the output when the model
predicts a change (``model.add_input``).

``forward`` runs a whole batch of sequences ``(B, T, F)`` from a given state;
the exported ONNX graph runs the same maths one step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lstm_stream.core.model.cell import CellKind
from lstm_stream.train.config import NetworkConfig

State = tuple[torch.Tensor, ...]  # (h,) or (h, c), each (L, B, H)


@dataclass(frozen=True)
class ModelShape:
    """What the data decides about the network: input and output widths."""

    features: int
    outputs: int  # classes for classification
    add_input_index: int = -1  # regression: this raw input is added to every output


class SequenceModel(nn.Module):
    """Normalise -> LSTM/GRU stack -> head, over ``(B, T, F)`` batches of sequences."""

    x_mean: torch.Tensor  # (F,) buffers: saved in the state_dict, folded into the export
    x_std: torch.Tensor
    y_mean: torch.Tensor  # (O,)
    y_std: torch.Tensor

    def __init__(self, config: NetworkConfig, shape: ModelShape) -> None:
        super().__init__()
        self.config, self.shape = config, shape
        self.cell = config.cell
        self.register_buffer("x_mean", torch.zeros(shape.features))
        self.register_buffer("x_std", torch.ones(shape.features))
        self.register_buffer("y_mean", torch.zeros(shape.outputs))
        self.register_buffer("y_std", torch.ones(shape.outputs))
        rnn = nn.LSTM if config.cell == CellKind.LSTM else nn.GRU
        self.rnn = rnn(shape.features, config.hidden, num_layers=config.layers,
                       dropout=config.dropout, batch_first=True)
        if config.head == "linear":
            self.head: nn.Module = nn.Linear(config.hidden, shape.outputs)
        else:
            self.head = nn.Sequential(nn.Linear(config.hidden, config.head_hidden), nn.ReLU(),
                                      nn.Linear(config.head_hidden, shape.outputs))

    def set_normalization(self, x_mean: torch.Tensor, x_std: torch.Tensor,
                          y_mean: torch.Tensor | None = None,
                          y_std: torch.Tensor | None = None) -> None:
        """Store the training split's statistics in the model (they are exported with it)."""
        self.x_mean.copy_(x_mean)
        self.x_std.copy_(x_std)
        if y_mean is not None and y_std is not None:
            self.y_mean.copy_(y_mean)
            self.y_std.copy_(y_std)

    def zero_state(self, batch: int) -> State:
        shape = (self.config.layers, batch, self.config.hidden)
        zeros = torch.zeros(shape, dtype=self.x_mean.dtype)
        return (zeros, zeros.clone()) if self.cell == CellKind.LSTM else (zeros,)

    def forward_normalized(self, x: torch.Tensor, state: State | None = None
                           ) -> tuple[torch.Tensor, State]:
        """``x`` (B, T, F) in data units -> head output (B, T, O) in normalised units."""
        z = (x - self.x_mean) / self.x_std  # (B, T, F)
        if state is None:
            state = self.zero_state(x.shape[0])
        if self.cell == CellKind.LSTM:
            seq, (h, c) = self.rnn(z, (state[0], state[1]))  # seq (B, T, H)
            new_state: State = (h, c)
        else:
            seq, h = self.rnn(z, state[0])
            new_state = (h,)
        return self.head(seq), new_state  # (B, T, O)

    def denormalize(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Head output (B, T, O) -> the served ``y``: probabilities, or targets in data units."""
        if self.config.task == "classification":
            return torch.softmax(out, dim=-1)
        y = out * self.y_std + self.y_mean
        if self.shape.add_input_index >= 0:
            i = self.shape.add_input_index
            y = y + x[..., i:i + 1]  # (B, T, 1) broadcast over outputs
        return y

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``x`` (B, T, F) -> (``y`` (B, T, O) as served, final state)."""
        out, new_state = self.forward_normalized(x, state)
        return self.denormalize(out, x), new_state
