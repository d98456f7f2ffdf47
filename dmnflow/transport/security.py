"""CURVE on tcp edges: keys, the ZAP allow-list, and counting refused handshakes.

A key directory (``dmnflow keys generate DIR``) holds keypairs as ``zmq.auth`` writes them:
``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600). With ``security:
{curve: DIR}`` every tcp bind is a CURVE server with this host's keypair and a ZAP
authenticator that admits only clients whose public key is a ``*.key`` file in DIR; every
tcp connect is a CURVE client that expects the server's public key. A peer without a key,
or with one not in DIR, is refused at the handshake: the socket monitor counts it
(``EVENT_HANDSHAKE_FAILED_*``), and nothing it sends reaches the runtime. No key is ever
logged; messages name key files, not keys.

Without a ZAP handler libzmq would accept any client key (encrypted, not authenticated), so
a worker with tcp binds always starts the authenticator before it binds.

Without ``security.curve`` (and not ``insecure``) the plan says ``run_keys``: the launch
writes one keypair, ``run``, into ``RUN_KEYS`` of the run directory (mode 0700, the secret
0600), and every worker serves and dials its automatic tcp ports with it. No user manages a
key; a local peer of another user cannot read it, so one that binds a port a killed producer
freed fails the handshake, and nothing it sends is taken.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

from ..errors import ConfigError

__all__ = ["DEFAULT_KEY", "RUN_KEY", "RUN_KEYS", "Curve", "KeyError_", "REFUSED_EVENTS", "check_key_dir",
           "check_key_name", "generate_keys", "load_curve", "write_run_keys"]

REFUSED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
WATCHED = REFUSED_EVENTS | zmq.EVENT_HANDSHAKE_SUCCEEDED
KEY_LEN = 40  # a 32-byte key in Z85
RUN_KEYS, RUN_KEY = "keys", "run"  # the per-run key directory (in the run directory) and its keypair


class KeyError_(ConfigError, ValueError):  # noqa: N801 - KeyError is a builtin with another meaning
    """A key file that cannot be used: missing, unreadable, malformed, or readable by others.

    A `ConfigError` (the key is not set up where it runs); still a ValueError, as it always was."""


def _check_key(value: bytes | None, file: Path, what: str) -> bytes:
    if value is None:
        raise KeyError_(f"{file.name} has no {what} key")
    if len(value) != KEY_LEN:
        raise KeyError_(f"the {what} key in {file.name} is {len(value)} characters long; a CURVE key is "
                        f"{KEY_LEN} (Z85 of 32 bytes)")
    try:
        z85.decode(value)
    except (ValueError, KeyError, IndexError) as exc:
        raise KeyError_(f"the {what} key in {file.name} is not Z85 text") from exc
    return value


def read_public(file: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(file)
    except OSError as exc:
        raise KeyError_(f"cannot read {file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise KeyError_(f"{file.name} is not a key file ({exc})") from exc
    return _check_key(public, file, "public")


def read_secret(file: Path) -> tuple[bytes, bytes]:
    """(public, secret) of a ``.key_secret`` file that only its owner may read."""
    try:
        mode = file.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyError_(f"no secret key {file}: run `dmnflow keys generate {file.parent}`") from exc
    except OSError as exc:
        raise KeyError_(f"cannot read {file}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(f"the secret key {file} can be read by other users (mode {stat.filemode(mode)}); "
                        f"make it private: chmod 600 {file}")
    try:
        public, secret = zmq.auth.load_certificate(file)
    except OSError as exc:
        raise KeyError_(f"cannot read {file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise KeyError_(f"{file.name} is not a key file ({exc})") from exc
    return _check_key(public, file, "public"), _check_key(secret, file, "secret")


DEFAULT_KEY = "graph"  # the keypair `dmnflow keys generate DIR` writes without --name
_KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_key_name(name: str) -> str | None:
    """Why ``name`` cannot name a keypair (None when it can): it becomes ``DIR/NAME.key``, so a
    path (``../evil``, ``a/b``) would put keys outside the directory."""
    if _KEY_NAME_RE.fullmatch(name) and ".." not in name:
        return None
    return (f"{name!r} is not a plain file name: a keypair's name is letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (it names the files NAME.key and NAME.key_secret in DIR)")


def check_key_dir(directory: Path, key: str | None, shown: str | None = None) -> tuple[str, list[str]]:
    """The keypair name to use and the problems with the directory (empty when usable);
    ``shown`` is how messages name the directory (as the user wrote it). Without ``key``:
    the directory's only secret key, or ``graph`` (the default keypair) among several, so
    an outside viewer's keypair generated beside it needs no ``security.key``."""
    problems: list[str] = []
    if not directory.is_dir():
        where = shown or directory
        return key or "", [f"no key directory {where}: run `dmnflow keys generate {where}`"]
    if shown is not None:  # name files as the user wrote the directory, not by an absolute path
        return _named(check_key_dir(directory, key), str(directory), shown)
    secrets_ = sorted(p.name[: -len(".key_secret")] for p in directory.glob("*.key_secret"))
    if key is not None and (problem := check_key_name(key)) is not None:
        return key, [f"security.key: {problem}"]
    if key is None:
        if len(secrets_) != 1 and DEFAULT_KEY not in secrets_:
            found = ", ".join(secrets_) or "none"
            return "", [f"{directory} must hold one secret key, or {DEFAULT_KEY}.key_secret among several, when "
                        f"`key:` is not given (found: {found}); name the one this host uses with security.key"]
        key = secrets_[0] if len(secrets_) == 1 else DEFAULT_KEY
    try:
        read_secret(directory / f"{key}.key_secret")
    except KeyError_ as exc:
        problems.append(str(exc))
    if not (directory / f"{key}.key").exists():
        problems.append(f"{key}.key (this host's public key) is not in {directory}, so its own workers would be "
                        f"refused: put it back, or run `dmnflow keys generate {directory} --name {key} --force`")
    for public in sorted(directory.glob("*.key")):
        try:
            read_public(public)
        except KeyError_ as exc:
            problems.append(str(exc))
    return key, problems


@dataclass(frozen=True)
class Curve:
    """This host's keypair, the public keys of the key directory, and the allow-list."""

    directory: str
    key: str
    public: bytes
    secret: bytes
    publics: dict[str, bytes]

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (before it binds)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def dial(self, sock: zmq.Socket, server_key: str | None = None) -> None:
        """Make ``sock`` a CURVE client of a server holding ``server_key`` (before it connects)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.publics.get(server_key or self.key, self.public)

    def authenticator(self, zctx: zmq.Context) -> Any:
        """A running ZAP handler that admits the directory's public keys (stop it at exit)."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(zctx, log=_quiet_log())
        auth.start()
        auth.configure_curve(domain="*", location=self.directory)
        return auth


def load_curve(directory: str, key: str | None) -> Curve:
    """Read the key directory; KeyError_ names what is wrong with it."""
    path = Path(directory)
    name, problems = check_key_dir(path, key)
    if problems:
        raise KeyError_("; ".join(problems))
    public, secret = read_secret(path / f"{name}.key_secret")
    publics = {p.name[: -len(".key")]: read_public(p) for p in path.glob("*.key")}
    return Curve(str(path), name, public, secret, publics)


def generate_keys(directory: str | os.PathLike[str], names: list[str], force: bool = False) -> list[Path]:
    """Write a keypair per name (a graph's, or one per host); secret files are mode 0600."""
    for name in names:
        if (problem := check_key_name(name)) is not None:
            raise KeyError_(f"--name {problem}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: list[Path] = []
    for name in names:
        secret = path / f"{name}.key_secret"
        if (secret.exists() or (path / f"{name}.key").exists()) and not force:
            raise KeyError_(f"{secret} already exists; pass --force to replace it (clients holding the old "
                            "public key will then be refused)")
        old = os.umask(0o077)
        try:
            public_file, secret_file = zmq.auth.create_certificates(path, name)
        finally:
            os.umask(old)
        os.chmod(secret_file, 0o600)
        os.chmod(public_file, 0o644)
        written += [Path(public_file), Path(secret_file)]
    return written


def write_run_keys(run_dir: str) -> Path:
    """The run's own keypair (``security.run_keys``), in the private run directory."""
    directory = Path(run_dir, RUN_KEYS)
    generate_keys(directory, [RUN_KEY])
    return directory


def _named(result: tuple[str, list[str]], actual: str, shown: str) -> tuple[str, list[str]]:
    key, problems = result
    return key, [p.replace(actual, shown) for p in problems]


def _quiet_log() -> Any:
    """The authenticator logs every refusal with the client's address at DEBUG; keep it there."""
    import logging

    log = logging.getLogger("dmnflow.zap")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    return log


class Watch:
    """Connection events of one worker's sockets: CURVE refusals counted per socket, and on
    binds, connections that ended (libzmq ends one whose peer broke the protocol, an oversize
    message included, and drops what was queued behind it: counted, not silent)."""

    def __init__(self) -> None:
        # monitor socket -> (what, on_refused, on_disconnected)
        self.monitors: dict[zmq.Socket, tuple[str, Any, Any]] = {}

    def add(self, sock: zmq.Socket, what: str, on_refused: Any, on_disconnected: Any = None) -> zmq.Socket:
        mon = sock.get_monitor_socket(WATCHED | (zmq.EVENT_DISCONNECTED if on_disconnected else 0))
        self.monitors[mon] = (what, on_refused, on_disconnected)
        return mon

    def read(self, mon: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            _, on_refused, on_disconnected = self.monitors[mon]
            if event["event"] & REFUSED_EVENTS:
                on_refused(event)
            elif event["event"] == zmq.EVENT_DISCONNECTED and on_disconnected is not None:
                on_disconnected(event)

    def close(self) -> None:
        for mon in self.monitors:
            mon.close(0)
        self.monitors = {}
