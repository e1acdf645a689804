"""The TLS profile (fhirai.tls): what a context built by it will negotiate, as OpenSSL reports it."""

from __future__ import annotations

import ssl

from fhirai.tls import TLS12_SUITES, client_context, handshake_failure


def test_the_profile_allows_tls_1_2_and_up_with_ecdhe_aead_suites_only():
    context = client_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {name for name, _ in TLS12_SUITES}
    assert all(
        c["aead"] and c["kea"] == "kx-ecdhe" for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"
    )
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_handshake_failure_is_told_by_its_reason_only():
    error = ssl.SSLError(1, "[SSL: NO_SHARED_CIPHER] no shared cipher")
    error.reason = "NO_SHARED_CIPHER"
    assert handshake_failure(error) == "NO_SHARED_CIPHER"
    assert handshake_failure(TimeoutError()) == "no handshake within the timeout"
