"""The one TLS profile of every fhirai listener and client (DICOM, MLLP, HTTPS): BCP 195 (RFC 9325)
as DICOM PS3.15 Annex B.9 (BCP 195 TLS Profile) and B.10 (Non-downgrading BCP 195 TLS Profile)
profile it. TLS 1.2 or 1.3 only; on TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
ChaCha20-Poly1305), so every session has forward secrecy; no TLS compression (CRIME), no
renegotiation. TLS 1.3's own suites are all AEAD with ephemeral keys and are left as OpenSSL has
them. A peer that offers only something older or weaker gets a handshake failure."""

from __future__ import annotations

import ssl

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# The TLS 1.2 suites, (OpenSSL name, IANA name), in order of preference: RFC 9325 4.2's four
# recommended suites, then ChaCha20-Poly1305 (also in PS3.15 B.10's list), all ECDHE and AEAD.
TLS12_SUITES = (
    ("ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    ("ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    ("ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    ("ECDHE-RSA-CHACHA20-POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
)
CIPHERS = ":".join(name for name, _ in TLS12_SUITES)


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """The profile on a context: versions, TLS 1.2 suites, options (the same for server and client)."""
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_SINGLE_ECDH_USE
    return context


def server_context(cert: str, key: str = "", ca: str = "") -> ssl.SSLContext:
    """A listener's context: this certificate (and key, when not in the same file); with `ca`,
    mutual TLS (PS3.15 B.9: both ends authenticate): a client must present a certificate issued
    by that CA, or the handshake fails."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert, key or None)
    if ca:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """An outgoing connection's context: the peer's certificate is verified (against `ca`, else
    the system's trust store) with its host name; `cert` (and `key`) is presented when the peer
    asks for a client certificate (mutual TLS)."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if ca:
        context.load_verify_locations(ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


def handshake_failure(exc: BaseException) -> str:
    """Why a handshake failed, in words safe for the log: OpenSSL's reason code (e.g.
    NO_SHARED_CIPHER, UNSUPPORTED_PROTOCOL, CERTIFICATE_VERIFY_FAILED), never certificate
    contents (a client certificate's subject may name a person)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "no handshake within the timeout"
    return type(exc).__name__
