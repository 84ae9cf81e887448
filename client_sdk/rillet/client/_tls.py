"""TLS options for `Client.connect`: how the client checks the server and, for mutual TLS, shows who it is."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

StrPath = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS for a connection; paths are PEM files, read when the client connects.

    - `ca_file`: the CA bundle the server's certificate must chain to; None trusts the system's roots.
    - `cert_file` and `key_file` (both or neither): the client's certificate, for servers that require mutual TLS.
    - `server_name`: the name the server's certificate must carry when it is not the target's host (e.g. connecting
      by IP address to a certificate issued for a DNS name).
    """

    ca_file: StrPath | None = None
    cert_file: StrPath | None = None
    key_file: StrPath | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials these options describe (reads the files)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )


def _read(path: StrPath | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None
