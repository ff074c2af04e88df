"""Keeps the bytes the SDK uploads for a snapshot. The SDK uploads each file to the `blobUri` the content
service hands out, but always rebuilds it as `https://{account}.blob.{suffix}` (azureml/_file_utils/upload.py),
so the upload cannot be aimed at a plain-HTTP fake. This is an HTTPS proxy for `*.blob.core.windows.net`:
it answers CONNECT, ends TLS with a certificate from a throw-away CA, and answers Put Blob by keeping the
body. The publishing process reaches it through `https_proxy` and trusts it through `REQUESTS_CA_BUNDLE`
(`environ()`); calls to 127.0.0.1 stay direct (`no_proxy`)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from emulator.loopback import LoopbackServer

BLOB_HOST_SUFFIX = ".blob.core.windows.net"


class SnapshotUploads(LoopbackServer):
    """The proxy and what it received: `blobs` maps a blob's path (`/{container}/{name}`) to its bytes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.blobs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.ca_bundle, cert, key = _make_certificates(self.folder)
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.load_cert_chain(cert, key)
        super().__init__()

    thread_name = "snapshot-uploads"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return type("_ProxyHandlerFor", (_ProxyHandler,), {"uploads": self})

    @property
    def proxy_url(self) -> str:
        return self.url

    def environ(self) -> dict[str, str]:
        """What the process that publishes needs so that its snapshot uploads land here. Both spellings of the
        proxy variables: requests prefers the lower-case ones when both are set."""
        return {
            "https_proxy": self.proxy_url,
            "HTTPS_PROXY": self.proxy_url,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
        }

    def take(self, blob_path: str) -> bytes | None:
        with self.lock:
            return self.blobs.get(blob_path)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    uploads: SnapshotUploads  # the proxy it serves (SnapshotUploads._handler)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the fake logs nothing to stderr
        pass

    def do_CONNECT(self) -> None:
        host = self.path.rsplit(":", 1)[0].lower()
        if not host.endswith(BLOB_HOST_SUFFIX):
            self.send_error(403, "only blob uploads go through this proxy")
            return
        self.send_response(200, "Connection Established")
        self.end_headers()
        uploads = self.uploads
        try:
            tls = uploads.ssl_context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.close_connection = True
            return
        _BlobHandler(uploads, tls, self.client_address, self.server)
        self.close_connection = True


class _BlobHandler(BaseHTTPRequestHandler):
    """Put Blob, as the storage service answers it; anything else is 404."""

    protocol_version = "HTTP/1.1"

    def __init__(self, uploads: SnapshotUploads, *args: Any) -> None:
        self.uploads = uploads
        super().__init__(*args)  # handles the request

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_PUT(self) -> None:
        body = self._body()
        with self.uploads.lock:
            self.uploads.blobs[self._blob_path()] = body
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self._blob_headers(body)
        self.send_header("x-ms-request-server-encrypted", "true")
        self.end_headers()

    def do_HEAD(self) -> None:
        # Get Blob Properties: the SDK checks the uploaded size against the file's after each upload
        body = self.uploads.take(self._blob_path())
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.send_header("x-ms-error-code", "BlobNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("x-ms-blob-type", "BlockBlob")
        self._blob_headers(body)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_error(404, "not found")

    def _blob_path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def _blob_headers(self, body: bytes) -> None:
        self.send_header("ETag", '"0x' + hashlib.sha1(body).hexdigest()[:16].upper() + '"')
        self.send_header("Last-Modified", dt.datetime.now(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"))
        self.send_header("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode())
        self.send_header("x-ms-version", self.headers.get("x-ms-version") or "2021-08-06")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a `*.blob.core.windows.net` certificate it signed; the bundle holds the machine's usual CAs
    (certifi's) plus this one, so nothing else the process calls over https stops verifying."""
    import certifi
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-aml snapshot uploads CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "*" + BLOB_HOST_SUFFIX)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*" + BLOB_HOST_SUFFIX)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    cert_path, key_path, bundle_path = folder / "blob.pem", folder / "blob.key", folder / "ca-bundle.pem"
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    bundle_path.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca_cert.public_bytes(pem))
    return bundle_path, cert_path, key_path
