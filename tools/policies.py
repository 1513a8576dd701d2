"""Recurrent policies as users write them in PyTorch, for the bring-your-own-model tests.

``forward(obs, h0, c0) -> (action, value, hn, cn)``: batch-first ``obs`` of one time
step, torch's ``[layers, batch, hidden]`` state, an action head and a value head. The
factories are seeded, so ``lstm-stream check --torch tests/policies.py:lstm_policy``
rebuilds exactly the module a test exported.
"""

from __future__ import annotations

import torch

FEATURES, HIDDEN, LAYERS, ACTIONS = 10, 48, 2, 3


class LstmPolicy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.action = torch.nn.Linear(HIDDEN, ACTIONS)
        self.value = torch.nn.Linear(HIDDEN, 1)

    def forward(self, obs: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        out, (hn, cn) = self.rnn(obs, (h0, c0))  # obs (B, 1, F), h0/c0 (L, B, H)
        top = out[:, -1]  # (B, H)
        return self.action(top), self.value(top), hn, cn


class GruPolicy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.action = torch.nn.Linear(HIDDEN, ACTIONS)
        self.value = torch.nn.Linear(HIDDEN, 1)

    def forward(self, obs: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, hn = self.rnn(obs, h0)
        top = out[:, -1]
        return self.action(top), self.value(top), hn


def lstm_policy() -> LstmPolicy:
    torch.manual_seed(0)
    return LstmPolicy().eval()


def gru_policy() -> GruPolicy:
    torch.manual_seed(1)
    return GruPolicy().eval()


def lstm_policy_half() -> LstmPolicy:
    return lstm_policy().half()
