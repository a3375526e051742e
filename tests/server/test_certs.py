"""Certificates: the self-signed one browsers can pin, its renewal, and configured files."""

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shopcast.server._certs import CertificateError, CertificateStore, make_self_signed

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def test_self_signed_meets_the_browser_pinning_rules(tmp_path):
    store = CertificateStore(tmp_path, names=["shop.example"], validity_days=14)
    cert = store.load(NOW)
    leaf = x509.load_pem_x509_certificate(cert.cert_pem)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=14)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in san.get_values_for_type(x509.DNSName)} | \
            {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "127.0.0.1", "::1", "shop.example"} <= names
    assert cert.sha256_hex == hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert (tmp_path / "tls" / "self-signed.key").stat().st_mode & 0o077 == 0


def test_kept_until_renewal_window_then_renewed(tmp_path):
    store = CertificateStore(tmp_path, validity_days=10, renew_before=dt.timedelta(hours=48))
    first = store.load(NOW)
    assert store.load(NOW + dt.timedelta(days=7)).sha256_hex == first.sha256_hex
    later = NOW + dt.timedelta(days=8, hours=1)
    assert store.needs_renewal(first, later)
    renewed = store.load(later)
    assert renewed.sha256_hex != first.sha256_hex
    assert renewed.not_after > first.not_after


def test_new_public_name_makes_a_new_certificate(tmp_path):
    first = CertificateStore(tmp_path).load(NOW)
    second = CertificateStore(tmp_path, names=["new.example"]).load(NOW)
    assert first.sha256_hex != second.sha256_hex


def test_configured_pair_is_used_as_is(tmp_path):
    cert_pem, key_pem = make_self_signed(["example.com"], 5, NOW)
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    store = CertificateStore(tmp_path / "data", cert_file=str(tmp_path / "c.pem"),
                             key_file=str(tmp_path / "k.pem"))
    cert = store.load(NOW)
    assert not cert.self_signed and cert.cert_pem == cert_pem
    assert not store.needs_renewal(cert, NOW + dt.timedelta(days=30))
    assert not (tmp_path / "data" / "tls").exists()


def test_mismatched_or_missing_pair_is_a_clear_error(tmp_path):
    cert_pem, _ = make_self_signed(["a"], 5, NOW)
    _, other_key = make_self_signed(["b"], 5, NOW)
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(other_key)
    with pytest.raises(CertificateError, match="is not the key of"):
        CertificateStore(tmp_path, cert_file=str(tmp_path / "c.pem"), key_file=str(tmp_path / "k.pem")).load(NOW)
    with pytest.raises(CertificateError, match="cannot read"):
        CertificateStore(tmp_path, cert_file=str(tmp_path / "x.pem"), key_file=str(tmp_path / "k.pem")).load(NOW)


def test_validity_over_14_days_is_refused():
    with pytest.raises(ValueError):
        make_self_signed(["a"], 15, NOW)
