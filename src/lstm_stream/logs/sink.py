"""Eval's sink: outputs and diagnostics as messages of an MCAP log, at their log time."""

from __future__ import annotations

from lstm_stream.logs.writer import LogWriter


class LogSink:
    """Writes each payload to ``writer`` on the output or diagnostics topic."""

    def __init__(self, writer: LogWriter, output_topic: str, diagnostics_topic: str) -> None:
        self._write = writer.write
        self._out_topic = output_topic
        self._diag_topic = diagnostics_topic
        writer.channel(output_topic)  # both channels exist even when one stays empty
        writer.channel(diagnostics_topic)

    def output(self, payload: bytes, t_ns: int, stamp_ns: int | None) -> None:
        # the output's publish time is its stamp (as LogWriter would read it back from
        # the payload), else its log time: known here, so the payload is not decoded
        self._write(self._out_topic, payload, t_ns, t_ns if stamp_ns is None else stamp_ns)

    def diagnostic(self, payload: bytes, t_ns: int) -> None:
        self._write(self._diag_topic, payload, t_ns)

    def message(self, topic: str, payload: bytes, t_ns: int) -> None:
        self._write(topic, payload, t_ns)
