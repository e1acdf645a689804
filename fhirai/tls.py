"""The one TLS profile of every fhirai listener and client (DICOM, MLLP, HTTPS): BCP 195 (RFC 9325)
as DICOM PS3.15 Annex B.9 (BCP 195 TLS Profile) and B.10 (Non-downgrading BCP 195 TLS Profile)
profile it. TLS 1.2 or 1.3 only; on TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
ChaCha20-Poly1305), so every session has forward secrecy; no TLS compression (CRIME), no
renegotiation. TLS 1.3's own suites are all AEAD with ephemeral keys and are left as OpenSSL has
them. A peer that offers only something older or weaker gets a handshake failure."""

from __future__ import annotations

import ssl

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# OpenSSL names of the TLS 1.2 suites (RFC 9325 4.2 recommends these four; ChaCha20-Poly1305 is
# in B.10's list too): TLS_ECDHE_{ECDSA,RSA}_WITH_AES_{128,256}_GCM_SHA{256,384} and
# TLS_ECDHE_{ECDSA,RSA}_WITH_CHACHA20_POLY1305_SHA256.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!PSK:!SRP"
PROFILE = "BCP 195 (PS3.15 B.9 / B.10 non-downgrading): TLS 1.2+, ECDHE with AES-GCM or ChaCha20-Poly1305"


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
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
