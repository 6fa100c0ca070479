"""A throwaway PKI for the demo and the tests: a CA, a broker certificate, a client certificate.

Also an unrelated second CA with a broker certificate of its own, to show what happens when
the agent meets a broker it must not trust. Needs the ``demo`` extra (trustme).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLIENT_COMMON_NAME", "Pki", "make_pki"]

CLIENT_COMMON_NAME = "edge-gw-test"
"""Common name of the client certificate; the broker uses it as the MQTT username."""

_SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pki:
    """Paths of the PEM files written by :func:`make_pki`."""

    directory: Path
    ca_file: Path
    server_cert: Path
    """Broker certificate (for 127.0.0.1 and localhost) followed by its chain."""
    server_key: Path
    client_cert: Path
    client_key: Path
    client_common_name: str
    other_ca_file: Path
    """A second CA, unrelated to ``ca_file``."""
    other_server_cert: Path
    """A broker certificate for the same names, signed by the second CA."""
    other_server_key: Path
    other_client_cert: Path
    """A client certificate signed by the second CA (the broker must not accept it)."""
    other_client_key: Path


def make_pki(directory: Path) -> Pki:
    """Write a fresh CA with broker and client certificates (and the unrelated set)."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "edge_agent.devtools.pki needs trustme: pip install 'edge-agent[demo]'"
        ) from exc

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="edge-agent test CA")
    other_ca = trustme.CA(organization_name="edge-agent unrelated CA")

    def write_cert(
        authority: trustme.CA, cert_name: str, key_name: str, *identities: str, cn: str | None
    ) -> tuple[Path, Path]:
        cert = authority.issue_cert(*identities, common_name=cn)
        cert_path, key_path = directory / cert_name, directory / key_name
        cert_path.unlink(missing_ok=True)
        for blob in cert.cert_chain_pems:
            blob.write_to_path(str(cert_path), append=True)
        cert.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        return cert_path, key_path

    ca_file, other_ca_file = directory / "ca.pem", directory / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other_ca.cert_pem.write_to_path(str(other_ca_file))
    server_cert, server_key = write_cert(
        ca, "server.pem", "server.key", *_SERVER_NAMES, cn="localhost"
    )
    client_cert, client_key = write_cert(
        ca, "client.pem", "client.key", cn=CLIENT_COMMON_NAME
    )
    other_server_cert, other_server_key = write_cert(
        other_ca, "other-server.pem", "other-server.key", *_SERVER_NAMES, cn="localhost"
    )
    other_client_cert, other_client_key = write_cert(
        other_ca, "other-client.pem", "other-client.key", cn=CLIENT_COMMON_NAME
    )
    return Pki(
        directory=directory,
        ca_file=ca_file,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        client_common_name=CLIENT_COMMON_NAME,
        other_ca_file=other_ca_file,
        other_server_cert=other_server_cert,
        other_server_key=other_server_key,
        other_client_cert=other_client_cert,
        other_client_key=other_client_key,
    )
