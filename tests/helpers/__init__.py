"""Test helpers, imported by every test as ``helpers.<module>``.

- ``support``: the repository's root, a live ``serve`` launcher and vehicle-stack client
  (the library's own, lstm_stream.procs and lstm_stream.serve.client), free endpoints,
  NaN-poisoned models.
- ``logs``: MCAP logs of sensor and target messages, written with the project's writer.
- ``data``: ``.npz`` training sets with a learnable signal.
- ``tools``: the scripts of ``tools/`` (make_model, fuzz_serve, policies, export_policy),
  loaded by their file paths, so that tests use them as a user runs them and nothing is
  put on ``sys.path``.
"""
