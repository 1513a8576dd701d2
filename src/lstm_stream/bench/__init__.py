"""Latency tests for edge hardware: ``lstm-stream bench``.

- :mod:`.stats`: percentile summaries.
- :mod:`.platform`: the machine and settings recorded with every report.
- :mod:`.step`: in-process step latency per backend, and the bare ``run`` floor.
- :mod:`.servers`: the comparison servers (bare ZeroMQ echo, receive+decode,
  naive onnxruntime and torch loops), run as their own processes like ``serve``.
- :mod:`.e2e`: the load generator: fixed-rate publisher and subscriber on one
  clock, against any of those servers or a real ``lstm-stream serve``.
- :mod:`.report`: putting it together, ratios to the floors, text, JSON and plots.
- :mod:`.throughput`: ``--throughput``: steps per second for many streams with a
  bounded window in flight, batched and unbatched runner, floors and naive servers.
"""
