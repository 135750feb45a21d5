"""Test-only TDX quotes: structurally valid v4 quotes under a test root of trust.

Everything a production quote carries is here and real: a TD report body, an ECDSA P-256 attestation key signing
header + body, a QE report signed by a PCK key, a PCK certificate chain with Intel's SGX extension (FMSPC,
CPUSVN, PCESVN, ...), CRLs, and TCB info / QE identity JSON signed by a TCB signing certificate. dcap-qvl parses
and verifies these quotes exactly as it does Intel's; the one substitution is the root of trust, a CA generated
here that a test configures as trusted (`Settings.tdx_root_ca_pem`). Nothing here is importable by the server.

    >>> kit = QuoteKit.create(datetime(2026, 1, 1, tzinfo=timezone.utc))
    >>> quote = kit.quote(report_data=bytes(64))
    >>> len(quote) > 1000 and quote[:2] == b"\\x04\\x00"
    True
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SGX_EXTENSION = "1.2.840.113741.1.13.1"
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
TD_ATTRIBUTES = bytes.fromhex("0000001000000000")  # SEPT_VE_DISABLE set, not debug: what dcap-qvl demands
ZERO48 = bytes(48)


# -- a minimal DER writer: the SGX extension is a nested SEQUENCE of (OID, value) pairs ------------------------
def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytes([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, body)


def _int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _pair(oid: str, value: bytes) -> bytes:
    return _seq(_oid(oid), value)


def sgx_extension(*, ppid: bytes, cpu_svn: bytes, pce_svn: int, pce_id: bytes, fmspc: bytes) -> bytes:
    base = SGX_EXTENSION
    tcb = [_pair(f"{base}.2.{i + 1}", _int(cpu_svn[i])) for i in range(16)]
    tcb += [_pair(f"{base}.2.17", _int(pce_svn)), _pair(f"{base}.2.18", _tlv(0x04, cpu_svn))]
    return _seq(
        _pair(f"{base}.1", _tlv(0x04, ppid)),
        _pair(f"{base}.2", _seq(*tcb)),
        _pair(f"{base}.3", _tlv(0x04, pce_id)),
        _pair(f"{base}.4", _tlv(0x04, fmspc)),
        _pair(f"{base}.5", _tlv(0x0A, b"\x00")),  # SGX type: standard
    )


# -- keys, certificates, CRLs ----------------------------------------------------------------------------------
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gantry Test Root of Trust"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, not_before: datetime, days: int,
          extra: list[x509.ExtensionType] = (), path_length: int | None = None) -> x509.Certificate:
    usage = x509.KeyUsage(digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                          encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_before + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
               .add_extension(usage, critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(issuer: str, key, this_update: datetime, days: int, revoked: tuple[int, ...] = ()) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(_name(issuer)).last_update(this_update)
               .next_update(this_update + timedelta(days=days))
               .add_extension(x509.CRLNumber(1), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as the 64-byte r || s that quotes and Intel's collateral carry."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the kit ---------------------------------------------------------------------------------------------------
@dataclass
class QuoteKit:
    """A test root of trust, its collateral, and a quote factory; one kit per test module is plenty."""

    issued_at: datetime
    fmspc: bytes
    cpu_svn: bytes
    pce_svn: int
    tee_tcb_svn: bytes
    tcb_status: str
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb_cert: x509.Certificate
    attestation_key: ec.EllipticCurvePrivateKey
    validity_days: int = 30
    collateral: dict = field(default_factory=dict)

    @classmethod
    def create(cls, issued_at: datetime, *, fmspc: str = "00A06D080000", tcb_status: str = "UpToDate",
               validity_days: int = 30) -> "QuoteKit":
        start = issued_at - timedelta(days=1)
        root_key, pck_ca_key, pck_key, tcb_key = _key(), _key(), _key(), _key()
        root = _cert("Gantry Test SGX Root CA", root_key, "Gantry Test SGX Root CA", root_key, ca=True,
                     not_before=start, days=3650, path_length=1)
        pck_ca = _cert("Gantry Test PCK Platform CA", pck_ca_key, "Gantry Test SGX Root CA", root_key, ca=True,
                       not_before=start, days=3650, path_length=0)
        cpu_svn = bytes([3, 3, 2, 2, 4, 1, 0, 5] + [0] * 8)
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION), sgx_extension(
            ppid=hashlib.sha256(b"gantry-test-ppid").digest()[:16], cpu_svn=cpu_svn, pce_svn=13,
            pce_id=b"\x00\x00", fmspc=bytes.fromhex(fmspc)))
        pck = _cert("Gantry Test PCK Certificate", pck_key, "Gantry Test PCK Platform CA", pck_ca_key, ca=False,
                    not_before=start, days=3650, extra=[ext])
        tcb_cert = _cert("Gantry Test TCB Signing", tcb_key, "Gantry Test SGX Root CA", root_key, ca=False,
                         not_before=start, days=3650)
        kit = cls(issued_at=issued_at, fmspc=bytes.fromhex(fmspc), cpu_svn=cpu_svn, pce_svn=13,
                  tee_tcb_svn=bytes([5, 0, 3] + [0] * 13), tcb_status=tcb_status, root_key=root_key, root=root,
                  pck_ca_key=pck_ca_key, pck_ca=pck_ca, pck_key=pck_key, pck=pck, tcb_key=tcb_key,
                  tcb_cert=tcb_cert, attestation_key=_key(), validity_days=validity_days)
        kit.collateral = kit._collateral()
        return kit

    # the root a test trusts instead of Intel's
    @property
    def root_ca_pem(self) -> str:
        return _pem(self.root)

    @property
    def window(self) -> tuple[datetime, datetime]:
        """[issueDate, nextUpdate] of the TCB info: verification succeeds only inside it."""
        return self.issued_at, self.issued_at + timedelta(days=self.validity_days)

    def collateral_json(self, issued_at: datetime | None = None) -> str:
        """The collateral (dcap-qvl JSON); `issued_at` re-issues it for a later window under the same keys."""
        return json.dumps(self.collateral if issued_at is None else self._collateral(issued_at))

    def _collateral(self, issued_at: datetime | None = None) -> dict:
        issue = issued_at or self.issued_at
        next_update = issue + timedelta(days=self.validity_days)
        svn = lambda values: [{"svn": v} for v in values]  # noqa: E731
        tcb_info = json.dumps({
            "id": "TDX", "version": 3, "issueDate": _iso(issue), "nextUpdate": _iso(next_update),
            "fmspc": self.fmspc.hex().upper(), "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 18,
            "tdxModule": {"mrsigner": ZERO48.hex(), "attributes": "0000000000000000",
                          "attributesMask": "FFFFFFFFFFFFFFFF"},
            "tcbLevels": [
                {"tcb": {"sgxtcbcomponents": svn(self.cpu_svn), "pcesvn": self.pce_svn,
                         "tdxtcbcomponents": svn(self.tee_tcb_svn)},
                 "tcbDate": "2025-11-12T00:00:00Z", "tcbStatus": self.tcb_status,
                 **({"advisoryIDs": ["INTEL-SA-00000"]} if self.tcb_status != "UpToDate" else {})},
            ],
        }, separators=(",", ":"))
        qe_identity = json.dumps({
            "id": "TD_QE", "version": 2, "issueDate": _iso(issue), "nextUpdate": _iso(next_update),
            "tcbEvaluationDataNumber": 18, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(), "isvprodid": 2,
            "tcbLevels": [{"tcb": {"isvsvn": 4}, "tcbDate": "2025-11-12T00:00:00Z", "tcbStatus": "UpToDate"}],
        }, separators=(",", ":"))
        crl_start = issue - timedelta(hours=1)
        chain = _pem(self.tcb_cert, self.root)
        return {
            "pck_crl_issuer_chain": _pem(self.pck_ca, self.root),
            "root_ca_crl": _crl("Gantry Test SGX Root CA", self.root_key, crl_start, self.validity_days).hex(),
            "pck_crl": _crl("Gantry Test PCK Platform CA", self.pck_ca_key, crl_start, self.validity_days).hex(),
            "tcb_info_issuer_chain": chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": raw_signature(self.tcb_key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": raw_signature(self.tcb_key, qe_identity.encode()).hex(),
        }

    def quote(self, *, report_data: bytes, mrtd: bytes = ZERO48, rtmrs: tuple[bytes, ...] = (ZERO48,) * 4,
              td_attributes: bytes = TD_ATTRIBUTES) -> bytes:
        """A TDX v4 quote whose TD report carries these measurements and report data."""
        assert len(report_data) <= 64 and len(mrtd) == 48 and len(rtmrs) == 4
        header = struct.pack("<HHIHH", 4, 2, 0x81, 0, 0) + INTEL_QE_VENDOR_ID + bytes(20)
        body = (self.tee_tcb_svn + bytes(48) + ZERO48 + bytes(8) + td_attributes
                + bytes.fromhex("e702060000000000") + mrtd + ZERO48 * 3 + b"".join(rtmrs)
                + report_data.ljust(64, b"\x00"))
        assert len(header) == 48 and len(body) == 584
        signature = raw_signature(self.attestation_key, header + body)
        public = self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        qe_auth = hashlib.sha256(b"gantry-test-qe-auth").digest()
        qe_report = (bytes(16) + struct.pack("<I", 0) + bytes(28) + bytes.fromhex("11" + "00" * 15)
                     + hashlib.sha256(b"gantry-test-qe").digest() + bytes(32) + QE_MRSIGNER + bytes(96)
                     + struct.pack("<HH", 2, 4) + bytes(60)
                     + hashlib.sha256(public + qe_auth).digest() + bytes(32))
        assert len(qe_report) == 384
        chain = _pem(self.pck, self.pck_ca, self.root).encode()
        inner = struct.pack("<HI", 5, len(chain)) + chain
        qe_data = qe_report + raw_signature(self.pck_key, qe_report) + struct.pack("<H", len(qe_auth)) + qe_auth
        qe_data += inner
        certification = struct.pack("<HI", 6, len(qe_data)) + qe_data
        auth = signature + public + certification
        return header + body + struct.pack("<I", len(auth)) + auth


def report_data_for(nonce_hex: str, second_half: bytes = b"") -> bytes:
    """report_data = nonce (32 bytes) || optional binding (32 bytes), as a VM builds it."""
    return bytes.fromhex(nonce_hex) + second_half
