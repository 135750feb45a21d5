"""TDX quote verification: Intel's real quotes through dcap-qvl, and test-root quotes through the same code.

The real vectors live beside the project (`../shared/testdata/tdx/`, never copied in); their tests skip with a
message where that folder is absent.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote as urlquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gantry_server.domain.attestation import (AttestationFailure, Attestor, Collateral, DcapVerifier, FileCollateral,
                                              MeasurementEntry, check_report_data, decode_quote, parse_quote)
from gantry_server.domain.attestation import failures as f
from gantry_server.domain.attestation.collateral import signed_member
from gantry_server.domain.attestation.measurements import BOOT, RUNTIME, check_gpus, load_file, match, merge, problems
from gantry_server.domain.attestation.passphrases import SyncPlan, new_passphrase, plan, volume_problems
from gantry_server.domain.attestation.verifier import classify

from ..tdx_builder import QuoteKit

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "tdx"
needs_vectors = pytest.mark.skipif(
    not (VECTORS / "tdx_quote").exists(),
    reason=f"real TDX vectors not found at {VECTORS} (the shared/ folder beside the checkout)")

# Inside / outside the real collateral windows (tcbInfo issueDate .. nextUpdate).
IN_WINDOW = datetime(2025, 6, 25, tzinfo=timezone.utc)
OUTDATED_IN_WINDOW = datetime(2026, 2, 25, tzinfo=timezone.utc)
KIT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
NONCE = "ab" * 32


@pytest.fixture(scope="module")
def real() -> FileCollateral:
    return FileCollateral(VECTORS)


@pytest.fixture(scope="module")
def kit() -> QuoteKit:
    return QuoteKit.create(KIT_START)


def kit_verifier(kit: QuoteKit, tmp_path: Path, accepted=("UpToDate",)) -> DcapVerifier:
    (tmp_path / "collateral.json").write_text(kit.collateral_json())
    return DcapVerifier(FileCollateral(tmp_path), accepted_statuses=accepted,
                        root_ca_der=kit.root.public_bytes(serialization.Encoding.DER))


def _flip(raw: bytes, offset: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 0x01
    return bytes(out)


async def _reason(coro) -> AttestationFailure:
    with pytest.raises(AttestationFailure) as err:
        await coro
    return err.value


# -- the real quotes (Intel root of trust, dcap-qvl) -----------------------------------------------------------
@needs_vectors
async def test_real_quote_verifies_inside_its_collateral_window(real):
    quote = parse_quote((VECTORS / "tdx_quote").read_bytes())
    verified = await DcapVerifier(real).verify(quote, IN_WINDOW)
    assert verified.tcb_status == "UpToDate" and verified.advisory_ids == ()
    assert quote.fmspc == "B0C06F000000" and quote.version == 4
    assert quote.registers()["MRTD"].startswith("91eb2b44d141d4ec")


@needs_vectors
@pytest.mark.parametrize("where", ["body", "signature", "certification data", "qe report"])
async def test_real_quote_with_one_byte_flipped_is_rejected(real, where):
    raw = (VECTORS / "tdx_quote").read_bytes()
    auth = 48 + 584 + 4  # header, TD report, auth-data length
    offset = {"body": 48 + 136, "signature": auth + 5, "qe report": auth + 128 + 6 + 10,
              "certification data": len(raw) - 1500}[where]
    failure = await _reason(DcapVerifier(real).verify(parse_quote(_flip(raw, offset)), IN_WINDOW))
    assert failure.reason == f.SIGNATURE_INVALID, failure.message


@needs_vectors
@pytest.mark.parametrize("when", [IN_WINDOW - timedelta(days=30), IN_WINDOW + timedelta(days=60)])
async def test_real_quote_outside_the_collateral_window_is_rejected(real, when):
    failure = await _reason(DcapVerifier(real).verify(parse_quote((VECTORS / "tdx_quote").read_bytes()), when))
    assert failure.reason == f.COLLATERAL_EXPIRED
    assert "2025-06-19T10:16:03Z" in failure.message or "valid" in failure.message


@needs_vectors
async def test_outdated_quote_reports_its_tcb_status(real):
    quote = parse_quote((VECTORS / "tdx_quote_outdated").read_bytes())
    assert quote.version == 5
    failure = await _reason(DcapVerifier(real).verify(quote, OUTDATED_IN_WINDOW))
    assert failure.reason == f.TCB_STATUS
    assert failure.metadata["tcb_status"] == "TcbNotSupported"
    assert "CPUSVN component 8 is 3, needs 5" in failure.message and "90C06F000000" in failure.message


@needs_vectors
async def test_real_quote_is_not_trusted_under_another_root(real, kit):
    verifier = DcapVerifier(real, root_ca_der=kit.root.public_bytes(serialization.Encoding.DER))
    failure = await _reason(verifier.verify(parse_quote((VECTORS / "tdx_quote").read_bytes()), IN_WINDOW))
    assert failure.reason == f.SIGNATURE_INVALID


# -- test-root quotes: same parser, same dcap-qvl, a generated root ------------------------------------------
async def test_built_quote_verifies_under_the_test_root_only(kit, tmp_path):
    quote = parse_quote(kit.quote(report_data=bytes.fromhex(NONCE)))
    verified = await kit_verifier(kit, tmp_path).verify(quote, KIT_START + timedelta(days=1))
    assert verified.tcb_status == "UpToDate"
    intel = DcapVerifier(FileCollateral(tmp_path))  # Intel's root: the test root's collateral does not verify
    assert (await _reason(intel.verify(quote, KIT_START + timedelta(days=1)))).reason == f.SIGNATURE_INVALID


async def test_built_quote_with_a_flipped_byte_or_outside_the_window_is_rejected(kit, tmp_path):
    verifier = kit_verifier(kit, tmp_path)
    raw = kit.quote(report_data=bytes.fromhex(NONCE))
    assert (await _reason(verifier.verify(parse_quote(_flip(raw, 48 + 520)), KIT_START))).reason == \
        f.SIGNATURE_INVALID
    late = KIT_START + timedelta(days=kit.validity_days + 1)
    assert (await _reason(verifier.verify(parse_quote(raw), late))).reason == f.COLLATERAL_EXPIRED


@pytest.mark.parametrize(("status", "accepted", "ok"), [
    ("OutOfDate", ("UpToDate",), False),
    ("OutOfDate", ("UpToDate", "OutOfDate"), True),
    ("SWHardeningNeeded", ("UpToDate", "SWHardeningNeeded"), True),
    ("Revoked", ("UpToDate", "Revoked"), False),  # dcap-qvl never lets a revoked TCB through
])
async def test_tcb_status_policy_is_configuration(tmp_path, status, accepted, ok):
    kit = QuoteKit.create(KIT_START, tcb_status=status)
    verifier = kit_verifier(kit, tmp_path, accepted)
    quote = parse_quote(kit.quote(report_data=b""))
    if ok:
        assert (await verifier.verify(quote, KIT_START)).tcb_status == status
        return
    failure = await _reason(verifier.verify(quote, KIT_START))
    assert failure.reason == f.TCB_STATUS and failure.metadata["tcb_status"] == status
    assert status in failure.message


async def test_garbage_and_non_base64_quotes_are_quote_invalid():
    for text in ("", "!!!not base64!!!", base64.b64encode(b"\x04\x00" + b"x" * 900).decode()):
        with pytest.raises(AttestationFailure) as err:
            parse_quote(decode_quote(text))
        assert err.value.reason == f.QUOTE_INVALID
    assert decode_quote(base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("=")) == b"\xfb\xff"


@pytest.mark.parametrize(("message", "reason", "status"), [
    ("No matching TCB level found", f.TCB_STATUS, "TcbNotSupported"),
    ("TCB status is invalid: Revoked", f.TCB_STATUS, "Revoked"),
    ("QE ISVSVN 3 is below minimum required 4 from QE Identity", f.TCB_STATUS, "TcbNotSupported"),
    ("TCBInfo expired", f.COLLATERAL_EXPIRED, ""),
    ("TCBInfo issue date is in the future", f.COLLATERAL_EXPIRED, ""),
    ("Fmspc mismatch", f.COLLATERAL_UNAVAILABLE, ""),
    ("Failed to decode quote Caused by: not enough data", f.QUOTE_INVALID, ""),
    ("Debug mode is enabled", f.QUOTE_INVALID, ""),
    ("ISV enclave report signature is invalid", f.SIGNATURE_INVALID, ""),
    ("QE report hash mismatch", f.SIGNATURE_INVALID, ""),
    ("Failed to verify certificate chain Caused by: UnknownIssuer", f.SIGNATURE_INVALID, ""),
    ("QE MRSIGNER mismatch: expected A, got B", f.SIGNATURE_INVALID, ""),
    ("something new", f.QUOTE_INVALID, ""),
])
def test_dcap_errors_are_classified(message, reason, status):
    assert classify(message) == (reason, status)


# -- report data binding ---------------------------------------------------------------------------------------
def _client_cert() -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(KIT_START).not_valid_after(KIT_START + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return urlquote(cert.public_bytes(serialization.Encoding.PEM).decode()), hashlib.sha256(spki).digest()


def test_report_data_must_carry_the_nonce_and_optionally_the_client_key(kit):
    header, key_hash = _client_cert()
    quote = parse_quote(kit.quote(report_data=bytes.fromhex(NONCE) + key_hash))
    check_report_data(quote, NONCE)
    check_report_data(quote, NONCE, client_cert=header, require_cert=True)
    with pytest.raises(AttestationFailure) as err:
        check_report_data(quote, "cd" * 32)
    assert err.value.reason == f.NONCE_MISMATCH and err.value.metadata["report_data"] == NONCE
    other, _ = _client_cert()
    with pytest.raises(AttestationFailure) as err:
        check_report_data(quote, NONCE, client_cert=other, require_cert=True)
    assert err.value.reason == f.CLIENT_CERT_MISMATCH
    with pytest.raises(AttestationFailure) as err:
        check_report_data(quote, NONCE, require_cert=True)
    assert err.value.reason == f.CLIENT_CERT_MISSING


# -- measurement policy ----------------------------------------------------------------------------------------
def _reg(byte: int) -> str:
    return bytes([byte]) * 48


def entry(name="sek8s", version="1.0", mrtd=1, boot=(2, 3, 4, 5), runtime=(6, 7, 8, 9), gpus=("h100",),
          count=None) -> MeasurementEntry:
    return MeasurementEntry.of(name=name, version=version, mrtd=_reg(mrtd).hex(),
                               boot_rtmrs=[_reg(b).hex() for b in boot], runtime_rtmrs=[_reg(b).hex() for b in runtime],
                               expected_gpus=gpus, gpu_count=count)


def test_measurements_match_per_kind_and_name_the_differing_registers(kit):
    boot = parse_quote(kit.quote(report_data=b"", mrtd=_reg(1), rtmrs=tuple(_reg(b) for b in (2, 3, 4, 5))))
    entries = [entry(), entry(name="other", mrtd=9, boot=(9, 9, 9, 9))]
    assert match(entries, boot, BOOT).version == "1.0"
    with pytest.raises(AttestationFailure) as err:  # a boot quote is not a runtime quote
        match(entries, boot, RUNTIME)
    assert err.value.reason == f.MEASUREMENT_MISMATCH
    assert err.value.metadata["registers"] == "RTMR0,RTMR1,RTMR2,RTMR3"

    tweaked = parse_quote(kit.quote(report_data=b"", mrtd=_reg(1), rtmrs=tuple(_reg(b) for b in (2, 0xAA, 4, 0xBB))))
    with pytest.raises(AttestationFailure) as err:
        match(entries, tweaked, BOOT)
    meta = err.value.metadata
    assert meta["registers"] == "RTMR1,RTMR3" and meta["closest_policy"] == "sek8s"
    assert meta["actual_rtmr1"] == _reg(0xAA).hex() and meta["expected_rtmr1"] == _reg(3).hex()
    assert "RTMR1 and RTMR3 differ" in err.value.message
    with pytest.raises(AttestationFailure, match="no measurement policy"):
        match([], boot, BOOT)


def test_gpus_must_be_allowed_models_in_the_required_count():
    check_gpus(entry(gpus=("h100", "h200"), count=2), ["H100", "h200"])
    with pytest.raises(AttestationFailure) as err:
        check_gpus(entry(gpus=("h100",)), ["h100", "a100"])
    assert err.value.reason == f.GPU_MISMATCH and err.value.metadata["unexpected"] == "a100"
    with pytest.raises(AttestationFailure, match="requires 8"):
        check_gpus(entry(count=8), ["h100"])


def test_policy_entries_are_validated_and_loaded_from_a_file(tmp_path):
    assert problems(name="x", version="1", mrtd="00", boot_rtmrs=["00"], runtime_rtmrs=[_reg(1).hex()] * 4) == [
        ("mrtd", "must be 96 hex characters (48 bytes)"), ("boot_rtmrs", "must list exactly 4 values (RTMR0..RTMR3)"),
        ("boot_rtmrs[0]", "must be 96 hex characters (48 bytes)")]
    good = {"name": "a", "version": "2", "mrtd": _reg(1).hex().upper(), "boot_rtmrs": [_reg(2).hex()] * 4,
            "runtime_rtmrs": [_reg(3).hex()] * 4, "expected_gpus": ["H100"], "gpu_count": 8}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"measurements": [good]}))
    [loaded] = load_file(path)
    assert loaded.mrtd == _reg(1).hex() and loaded.expected_gpus == ("h100",) and loaded.gpu_count == 8
    path.write_text(json.dumps([{**good, "mrtd": "zz"}]))
    with pytest.raises(ValueError, match="entry 0 .* mrtd"):
        load_file(path)
    replaced = entry(name="a", version="3")
    assert [e.version for e in merge([loaded, entry(name="b")], [replaced])] == ["3", "1.0"]


# -- collateral and passphrases ----------------------------------------------------------------------------------
def test_collateral_window_is_the_intersection_of_its_parts(kit):
    item = Collateral.from_json(kit.collateral_json())
    assert item.fmspc == "00A06D080000"
    assert item.not_before == KIT_START and item.not_after == KIT_START + timedelta(days=kit.validity_days - 1,
                                                                                    hours=23)
    raw = '{"tcbInfo":{"b":1, "a":[1,2]},"signature":"00"}'
    assert signed_member(raw, "tcbInfo") == '{"b":1, "a":[1,2]}'  # the signed bytes, not a re-encoding


def test_luks_sync_plan_reuses_creates_rekeys_and_prunes():
    assert plan(set(), ["storage"], []) == SyncPlan(reuse=(), create=("storage",), prune=())
    assert plan({"storage", "tdx-cache"}, ["storage", "tdx-cache"], ["tdx-cache"]) == \
        SyncPlan(reuse=("storage",), create=("tdx-cache",), prune=())
    assert plan({"storage", "tdx-cache"}, ["storage"], []).prune == ("tdx-cache",)
    assert volume_problems(["storage", "swap"], ["tdx-cache"]) == [
        ("volumes[1]", "unsupported volume 'swap' (supported: storage, tdx-cache, chutefs-data)"),
        ("rekey[0]", "'tdx-cache' is not in volumes (rekey must be a subset of volumes)")]
    assert volume_problems([], []) == [("volumes", "must list at least one volume")]
    one, two = new_passphrase(), new_passphrase()
    assert len(one) == 128 and int(one, 16) >= 0 and one != two


async def test_attestor_checks_binding_then_measurements_and_records_what_still_matched(kit, tmp_path):
    attestor = Attestor(kit_verifier(kit, tmp_path))
    rtmrs = tuple(_reg(b) for b in (2, 3, 4, 5))
    good = base64.b64encode(kit.quote(report_data=bytes.fromhex(NONCE), mrtd=_reg(1), rtmrs=rtmrs)).decode()
    attested = await attestor.attest(good, kind=BOOT, nonce=NONCE, entries=[entry()], now=KIT_START)
    assert attested.entry.name == "sek8s" and attested.tcb_status == "UpToDate"
    failure = await _reason(attestor.attest(good, kind=BOOT, nonce="cd" * 32, entries=[entry()], now=KIT_START))
    assert failure.reason == f.NONCE_MISMATCH and failure.measurement_version == "1.0"


# -- the failure catalogue: every reason has a gRPC code and a legacy HTTP status -------------------------------
@pytest.mark.parametrize("reason", f.REASONS)
def test_every_attestation_reason_maps_to_a_status(reason):
    import grpc

    from gantry_server.errors import to_rpc_status
    from gantry_server.services.servers import FAILURE_STATUS, attestation_error

    cls, http = FAILURE_STATUS[reason]
    err = attestation_error(AttestationFailure(reason, "words", registers="RTMR1"))
    assert isinstance(err, cls) and err.http_status == http and err.reason == reason
    assert err.metadata["registers"] == "RTMR1" and err.code != grpc.StatusCode.UNKNOWN
    registration = attestation_error(AttestationFailure(reason, "words"), http_status=400, prefix="Server: ")
    assert registration.http_status == (503 if reason == f.COLLATERAL_UNAVAILABLE else 400)
    assert registration.message == "Server: words" and to_rpc_status(registration).message == "Server: words"


def test_attestation_settings_come_from_the_environment_and_bad_ones_stop_the_start(tmp_path):
    from gantry_server.config import ConfigError, Settings
    from gantry_server.services.servers import file_measurements

    cfg = Settings.from_env({"GANTRY_TDX_TCB_ACCEPTED": "UpToDate,OutOfDate", "GANTRY_TDX_CLIENT_CERT_BINDING": "true",
                             "GANTRY_GPU_EVIDENCE_VERIFIER": "nv-verify --json", "GANTRY_LUKS_PASSPHRASE": "k"}
                            ).attestation
    assert cfg.accepted_tcb_statuses == ("UpToDate", "OutOfDate") and cfg.client_cert_binding
    assert cfg.gpu_evidence_verifier == ("nv-verify", "--json") and "k" not in repr(cfg)
    for env in ({"GANTRY_TDX_TCB_ACCEPTED": "Fine"}, {"GANTRY_TDX_ATTESTATION_URL": "https://x/attest"},
                {"GANTRY_TDX_COLLATERAL_DIR": str(tmp_path / "missing")}):
        with pytest.raises(ConfigError):
            Settings.from_env(env)
    bad = tmp_path / "m.json"
    bad.write_text('[{"name": "x"}]')
    with pytest.raises(ConfigError, match="entry 0 lacks"):
        file_measurements(Settings.from_env({"GANTRY_TDX_MEASUREMENTS_FILE": str(bad)}).attestation)
