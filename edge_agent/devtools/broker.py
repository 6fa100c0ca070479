"""A throwaway Mosquitto broker on loopback, for the tests and the demo.

It writes its own ``mosquitto.conf`` into a directory and runs ``mosquitto -c`` as a child
process: a TLS listener that requires a client certificate (its common name becomes the
MQTT username), optionally a plaintext listener and an ACL file. The ports are picked once,
so :meth:`MosquittoBroker.stop` then :meth:`MosquittoBroker.start` brings the broker back on
the same ports ("broker down, then back").
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["BrokerError", "MosquittoBroker", "find_mosquitto"]

_HOST = "127.0.0.1"
_KNOWN_PATHS = (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto"))


class BrokerError(RuntimeError):
    """The broker could not be found or did not start."""


def find_mosquitto() -> Path:
    """Path of the mosquitto executable (/usr/sbin/mosquitto or on PATH)."""
    for candidate in _KNOWN_PATHS:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("mosquitto")
    if found is None:
        raise BrokerError(
            "mosquitto not found in /usr/sbin or on PATH: install it "
            "(Debian/Ubuntu: apt-get install mosquitto)"
        )
    return Path(found)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class MosquittoBroker:
    """A Mosquitto child process with a mutual-TLS listener on 127.0.0.1.

    Use as ``with MosquittoBroker(...) as broker:`` (or ``async with``, which starts and
    stops it off the event loop). ``tls_port`` and ``plain_port`` stay the same across
    :meth:`stop` and :meth:`start`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        plaintext: bool = False,
        acl: str | None = None,
        tls_version: str = "tlsv1.2",
        settings: Mapping[str, str] | None = None,
        ready_timeout_s: float = 10.0,
    ) -> None:
        """Describe the broker; nothing runs before :meth:`start`.

        ``acl`` is the text of a Mosquitto ACL file (applied to both listeners);
        ``tls_version`` is the oldest TLS version accepted (``tlsv1.2`` or ``tlsv1.3``);
        ``settings`` are mosquitto.conf options for the broker and its TLS listener, e.g.
        ``{"max_packet_size": "4096"}`` (a broker announcing MQTT 5 limits in its CONNACK).
        """
        self.settings = dict(settings or {})
        self.directory = directory
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self.acl = acl
        self.tls_version = tls_version
        self.ready_timeout_s = ready_timeout_s
        self.host = _HOST
        self.tls_port = _free_port()
        self.plain_port: int | None = _free_port() if plaintext else None
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self._executable = find_mosquitto()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Write the configuration, start mosquitto and wait until every port accepts."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._render_config())
        with (self.directory / "mosquitto.stderr").open("ab") as stderr:
            self._process = subprocess.Popen(
                [str(self._executable), "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``kill``); clients see the link drop."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the broker's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _render_config(self) -> str:
        lines = [
            "# written by edge_agent.devtools.broker",
            "per_listener_settings true",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # Otherwise mosquitto drops to user "mosquitto", which cannot read our files.
            lines.append("user root")
        acl_lines: list[str] = []
        if self.acl is not None:
            acl_file = self.directory / "acl"
            acl_file.write_text(self.acl)
            acl_lines = [f"acl_file {acl_file}"]
        lines += [
            "",
            f"listener {self.tls_port} {self.host}",
            f"cafile {self.ca_file}",
            f"certfile {self.cert_file}",
            f"keyfile {self.key_file}",
            f"tls_version {self.tls_version}",
            "require_certificate true",
            "use_identity_as_username true",
            *acl_lines,
            # After the listener: global options apply anyway, listener ones to this one.
            *(f"{key} {value}" for key, value in self.settings.items()),
        ]
        if self.plain_port is not None:
            lines += [
                "",
                f"listener {self.plain_port} {self.host}",
                "allow_anonymous true",
                *acl_lines,
            ]
        return "\n".join(lines) + "\n"

    def _wait_ready(self) -> None:
        ports = [self.tls_port] + ([self.plain_port] if self.plain_port is not None else [])
        deadline = time.monotonic() + self.ready_timeout_s
        for port in ports:
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    raise BrokerError(
                        f"mosquitto exited (code {code}) during start-up; "
                        f"log {self.log_file}:\n{self.log_tail()}"
                    )
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise BrokerError(
                            f"mosquitto did not listen on {self.host}:{port} within "
                            f"{self.ready_timeout_s:g} s; log {self.log_file}:\n{self.log_tail()}"
                        ) from None
                    # Readiness polling of a child process, not synchronisation of a test.
                    time.sleep(0.02)
