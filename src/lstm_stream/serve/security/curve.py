"""ZeroMQ CURVE for the runner: key files, the allow-list authenticator, socket set-up.

The runner is the CURVE *server* on every socket it secures, whether the socket
binds or connects: clients prove who they are with a key pair whose public half
is in the runner's allow-list directory (``security.authorized_keys``). A peer
without an allowed key never completes the handshake, so ZeroMQ delivers none of
its messages: it can neither read nor reset state.

Key files are the ZPL certificates of ``zmq.auth.create_certificates``
(``NAME.key`` public, ``NAME.key_secret`` public and secret); reading one parses
text, it never executes anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from lstm_stream.core.errors import SecurityError

# Environment variables read by client helpers when no keys are passed explicitly
# (so that `lstm-stream control` works against a secured runner).
ENV_CLIENT_KEY = "LSTM_STREAM_CLIENT_KEY"  # the client's NAME.key_secret
ENV_SERVER_KEY = "LSTM_STREAM_SERVER_KEY"  # the runner's public NAME.key


def _load(path: str | Path, *, need_secret: bool, what: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise SecurityError(f"Could not read the {what} key file {str(path)!r}: {err}. "
                            "Create key pairs with `lstm-stream keys generate DIR --name "
                            "NAME`.") from err
    if need_secret and not secret:
        raise SecurityError(f"The {what} key file {str(path)!r} holds no secret key: use the "
                            "NAME.key_secret file, not the public NAME.key.")
    return public, secret


@dataclass(frozen=True)
class ServerKeys:
    """The runner's key pair and the directory of client public keys it allows."""

    public: bytes
    secret: bytes
    authorized_dir: Path
    authorized: int  # how many client keys were found

    def start_authenticator(self, context: zmq.Context[Any]) -> ThreadAuthenticator:
        """Start the ZAP handler thread that accepts exactly the allow-listed keys."""
        auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
        auth.start()
        auth.configure_curve(domain="*", location=str(self.authorized_dir))
        return auth

    def secure(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server (call before bind or connect)."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)


def load_server_keys(server_key: str | Path, authorized_keys: str | Path) -> ServerKeys:
    """Read the runner's secret key file and check the allow-list directory."""
    public, secret = _load(server_key, need_secret=True, what="server (security.server_key)")
    assert secret is not None
    directory = Path(authorized_keys)
    if not directory.is_dir():
        raise SecurityError(f"security.authorized_keys {str(directory)!r} is not a directory. "
                            "Put the public NAME.key file of every allowed client there.")
    keys = sorted(directory.glob("*.key"))
    for key in keys:
        _load(key, need_secret=False, what="authorized client")
    if not keys:
        raise SecurityError(f"security.authorized_keys {str(directory)!r} holds no *.key "
                            "file: no client could connect. Copy the clients' public keys "
                            "there.")
    return ServerKeys(public, secret, directory, len(keys))


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the runner's public key it expects to talk to."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_files(cls, client_secret_file: str | Path,
                   server_public_file: str | Path) -> ClientKeys:
        public, secret = _load(client_secret_file, need_secret=True, what="client")
        server, _ = _load(server_public_file, need_secret=False, what="server public")
        assert secret is not None
        return cls(public, secret, server)

    @classmethod
    def from_env(cls) -> ClientKeys | None:
        """Keys named by LSTM_STREAM_CLIENT_KEY and LSTM_STREAM_SERVER_KEY, if both are set."""
        client, server = os.environ.get(ENV_CLIENT_KEY), os.environ.get(ENV_SERVER_KEY)
        if not client and not server:
            return None
        if not client or not server:
            raise SecurityError(f"Set both {ENV_CLIENT_KEY} (your NAME.key_secret) and "
                                f"{ENV_SERVER_KEY} (the runner's public key), or neither.")
        return cls.from_files(client, server)

    def secure(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the runner (call before bind or connect)."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create ``directory/name.key`` (public) and ``name.key_secret`` (mode 0600).

    Refuses to overwrite an existing pair.
    """
    if not name or "/" in name or name.startswith("."):
        raise SecurityError(f"Key name {name!r} must be a plain file name such as 'runner'.")
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise SecurityError(f"{str(path)!r} exists; refusing to overwrite a key. Choose "
                                "another --name or remove the old pair first.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
        try:
            zmq.auth.create_certificates(directory, name)
        finally:
            os.umask(old)
        public.chmod(0o644)
    except OSError as err:
        raise SecurityError(f"Could not write keys to {str(directory)!r}: {err}.") from err
    return public, secret
