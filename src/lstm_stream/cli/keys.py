"""``lstm-stream keys``: create CURVE key pairs for the runner and its clients."""

from __future__ import annotations

import argparse
from typing import Any

import zmq.auth

from lstm_stream.serve.security.curve import generate_keys

KEYS_EPILOG = """\
examples:
  lstm-stream keys generate keys/ --name runner      # the runner's pair
  lstm-stream keys generate keys/ --name planner     # one pair per client

Copy each client's public NAME.key into the runner's security.authorized_keys
directory and the runner's public runner.key to each client; secret files
(NAME.key_secret) never leave their machine. See docs/security.md.
"""


def add_commands(sub: Any) -> None:
    p = sub.add_parser("keys", help="create CURVE key pairs for authenticated sockets",
                       description="Create ZeroMQ CURVE key pairs (docs/security.md).",
                       epilog=KEYS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = keys_sub.add_parser("generate", help="write NAME.key and NAME.key_secret to DIR")
    gen.add_argument("directory", metavar="DIR", help="where to write the pair (created)")
    gen.add_argument("--name", default="runner", help="file name of the pair (default runner)")
    gen.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    public, secret = generate_keys(args.directory, args.name)
    key, _ = zmq.auth.load_certificate(public)
    print(f"public key  {public}  ({key.decode()})")
    print(f"secret key  {secret}  (mode 0600: keep it on this machine)")
    return 0
