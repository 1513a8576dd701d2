"""Recorded logs: MCAP files of the messages that crossed the wire.

``format`` says how a log is laid out (channels, metadata, times), ``writer``
and ``reader`` write and read it, ``record`` captures live traffic, ``recover``
repairs a file whose writer was killed, ``info`` summarises a log and
``mcap_records`` walks MCAP's records at the byte level. The ``record``, ``replay``,
``eval`` and ``log`` commands are in cli/record_replay_eval.py and cli/log_command.py.

Everything here needs the ``mcap`` package (the ``[logs]`` extra). This package
imports nothing at import time so that ``lstm-stream --help`` works without it;
import the submodules you need.
"""
