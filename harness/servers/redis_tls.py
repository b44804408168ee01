"""A redis-server that speaks only TLS, on a free loopback port, with certificates made by
``openssl`` here: a self-signed CA and a server certificate for 127.0.0.1 that it signed.
Debian's redis-server 7.0 is built with TLS (``--tls-port``)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from harness.helpers import free_port, wait_until
from harness.servers.redis_process import answers


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, common_name: str = "127.0.0.1") -> TlsFiles:
    """A self-signed CA and a server certificate for ``common_name`` it signed (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(ca), "-days", "2", "-subj", "/CN=leaderfeed test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={common_name}")  # fmt: skip
    extensions = directory / "san.cnf"
    extensions.write_text(f"subjectAltName=IP:{common_name}\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2",
            "-extfile", str(extensions))  # fmt: skip
    return TlsFiles(ca, cert, key)


class TlsRedisServer:
    """A redis-server that speaks only TLS (``--port 0 --tls-port P``), no client certificate
    required, with a password."""

    def __init__(self, files: TlsFiles, password: str) -> None:
        self.files = files
        self.password = password
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="leaderfeed-tls-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str = "rediss", query: str = "") -> str:
        return f"{scheme}://:{self.password}@127.0.0.1:{self.port}/0{query}"

    def start(self) -> TlsRedisServer:
        binary = shutil.which("redis-server") or "redis-server"
        args = [
            binary, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.files.cert), "--tls-key-file", str(self.files.key),
            "--tls-ca-cert-file", str(self.files.ca), "--tls-auth-clients", "no",
            "--requirepass", self.password, "--save", "", "--appendonly", "no",
            "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, interval=0.02, message=f"TLS redis-server on {self.port}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()}")
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, ssl=True,
            ssl_ca_certs=str(self.files.ca), socket_timeout=2,
        )  # fmt: skip
        return answers(client)

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
