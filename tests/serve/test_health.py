"""openpilot's alive rule for a source, as the health topic applies it."""

from __future__ import annotations

import pytest

from lstm_stream.core.step.sources import Source
from lstm_stream.serve.health import alive

GNSS = Source("gnss", ("lat_err",), (0,), rate_hz=10.0, max_age_ns=250_000_000, trigger=False)


@pytest.mark.parametrize(("rate", "age_ms", "expected"), [
    (10.0, 50.0, True),
    (8.0, 50.0, True),  # 0.8x: the edge, still alive
    (12.0, 50.0, True),
    (7.9, 50.0, False),  # too slow
    (12.5, 50.0, False),  # too fast (a duplicated publisher)
    (10.0, 251.0, False),  # right rate, but the last message is too old
    (None, 50.0, False),  # one message: no rate yet
    (10.0, None, False),  # never heard
])
def test_alive_needs_the_rate_within_a_fifth_and_a_young_last_message(
        rate: float | None, age_ms: float | None, expected: bool) -> None:
    assert alive(GNSS, rate, age_ms) is expected


def test_a_source_without_an_expected_rate_is_alive_while_young() -> None:
    free = Source("cam", ("lane",), (0,), rate_hz=0.0, max_age_ns=100_000_000, trigger=True)
    assert alive(free, None, 10.0) and not alive(free, 3.0, 150.0)
