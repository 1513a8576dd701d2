"""``eval --encoding json``: an output file that Foxglove opens and plots with no setup.

Eval writes its outputs as msgpack (what ``serve`` publishes and ``--reference``
compares), then this module rewrites the file with logs/foxglove.py's export:
JSON messages with a JSON schema per channel, ``outputs`` by the model's output
names, ``reset_event`` and ``stale_count`` as numbers. With ``--target-topic``
the log's targets are written into the same file on their own topic, with
``outputs`` by the same names, so one Plot panel overlays ``/policy.outputs.steer``
and ``/<target topic>.outputs.steer`` on the drive's timeline. A bag's targets
(``--target-field``) become ``{"stream", "seq", "stamp_ns", "y"}`` first.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack

from lstm_stream.core.model.contract import ModelContract
from lstm_stream.evaluate.options import EvalOptions
from lstm_stream.logs import format as fmt
from lstm_stream.logs.foxglove import export_foxglove
from lstm_stream.logs.reader import LoggedMessage, LogReader
from lstm_stream.logs.rosbag import RosBag, is_rosbag

log = logging.getLogger(__name__)


def output_labels(contract: ModelContract) -> list[str]:
    """A name per output of y: the model's output names, else y0, y1, ..."""
    return list(contract.output_names or (f"y{k}" for k in range(contract.n_outputs)))


def rewrite_as_json(output: Path, log_path: Path, options: EvalOptions,
                    output_names: list[str]) -> int:
    """Rewrite the msgpack eval ``output`` of ``log_path`` in place as Foxglove JSON,
    with the log's targets added; returns the messages written."""
    # a fresh name beside it: no file of the user's is replaced while converting
    handle, name = tempfile.mkstemp(prefix=output.name + ".", suffix=".msgpack",
                                    dir=output.parent)
    os.close(handle)
    staged = Path(name)
    output.replace(staged)
    try:
        meta = {**LogReader(staged).metadata.get(fmt.METADATA_NAME, {}), "encoding": "json"}
        written = export_foxglove(staged, output, output_names=output_names,
                                  extra=targets(log_path, options, output_names),
                                  metadata=meta)
    except BaseException:
        output.unlink(missing_ok=True)
        staged.replace(output)  # the msgpack outputs are kept, not lost
        raise
    staged.unlink()
    log.info("eval: %s written as JSON for Foxglove (%d messages)", output, written)
    return written


def targets(log_path: Path, options: EvalOptions,
            output_names: list[str]) -> Iterator[LoggedMessage]:
    """The log's target messages in log order, with ``y`` or ``outputs`` by name."""
    topic = options.target_topic
    if topic is None:
        return
    if is_rosbag(log_path):
        bag = RosBag(log_path, (), options.bag_target(output_names), "--target-field",
                     "--target-stream-field")
        try:
            for msg in bag.messages([topic]):
                body = msgpack.unpackb(msg.data)
                y = [body["x"][n] for n in output_names]
                data = msgpack.packb({"stream": body["stream"], "seq": body["seq"],
                                      "stamp_ns": body["stamp_ns"], "y": y})
                yield LoggedMessage(topic, msg.log_time_ns, msg.publish_time_ns, data,
                                    msg.sequence)
        finally:
            bag.close()
        return
    key = options.target_key
    for msg in LogReader(log_path).messages([topic]):
        if key == "y":
            yield msg  # the export adds outputs by name from y
            continue
        try:
            body = msgpack.unpackb(msg.data, raw=False)
            values = body[key]
            body["outputs"] = dict(zip(output_names, values, strict=True))
        except Exception:  # unusable targets were counted by scoring; shown as they are
            yield msg
            continue
        yield LoggedMessage(topic, msg.log_time_ns, msg.publish_time_ns,
                            msgpack.packb(body), msg.sequence)
