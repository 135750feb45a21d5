"""Measurement policy edges that mutation testing showed untested (issue 17).

What an operator or a miner notices: an entry written with upper-case hex still admits its servers, an entry
without GPU models admits any GPU, the documented limits (gpu_count 1..64, 64-character version and GPU
identifiers) hold at their edges, and a measurements file that is missing, unreadable or wrongly shaped stops the
start with one line naming the file instead of a traceback.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from gantry_server.config import ConfigError, Settings
from gantry_server.domain.attestation import AttestationFailure, MeasurementEntry, parse_quote
from gantry_server.domain.attestation import failures as f
from gantry_server.domain.attestation.measurements import (BOOT, RUNTIME, PolicyFileError, check_gpus, load_file,
                                                           match, problems)
from gantry_server.services.servers import file_measurements

from ..tdx_builder import QuoteKit

# Register values whose hex has letters a-f (upper-casing "0101..." changes nothing: a test that cannot fail).
MRTD = bytes([0xAB]) * 48
BOOT_RTMRS = tuple(bytes([b]) * 48 for b in (0xBC, 0xCD, 0xDE, 0xEF))
RUNTIME_RTMRS = tuple(bytes([b]) * 48 for b in (0xFA, 0xAF, 0xBA, 0xCA))


@pytest.fixture(scope="module")
def kit() -> QuoteKit:
    return QuoteKit.create(datetime(2026, 1, 1, tzinfo=timezone.utc))


def upper(regs) -> list[str]:
    return [r.hex().upper() for r in regs]


def fields(**changes) -> dict:
    base = {"name": "sek8s", "version": "1.0", "mrtd": MRTD.hex(), "boot_rtmrs": [r.hex() for r in BOOT_RTMRS],
            "runtime_rtmrs": [r.hex() for r in RUNTIME_RTMRS], "expected_gpus": ["h100"], "gpu_count": None}
    return base | changes


# -- upper-case hex ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("written", ["mrtd", "boot_rtmrs", "runtime_rtmrs"])
def test_an_entry_written_in_upper_case_hex_admits_its_servers(kit, tmp_path, written):
    values = {"mrtd": MRTD.hex().upper(), "boot_rtmrs": upper(BOOT_RTMRS), "runtime_rtmrs": upper(RUNTIME_RTMRS)}
    doc = fields(**{written: values[written]})
    assert not problems(**doc)
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"measurements": [doc]}))
    [from_file] = load_file(path)
    from_admin = MeasurementEntry.of(**doc)
    boot = parse_quote(kit.quote(report_data=b"", mrtd=MRTD, rtmrs=BOOT_RTMRS))
    runtime = parse_quote(kit.quote(report_data=b"", mrtd=MRTD, rtmrs=RUNTIME_RTMRS))
    for entry in (from_file, from_admin):
        assert match([entry], boot, BOOT).version == "1.0"
        assert match([entry], runtime, RUNTIME).version == "1.0"


def test_a_mismatch_against_an_upper_case_entry_names_only_the_register_that_differs(kit):
    entry = MeasurementEntry.of(**fields(mrtd=MRTD.hex().upper(), boot_rtmrs=upper(BOOT_RTMRS)))
    quote = parse_quote(kit.quote(report_data=b"", mrtd=MRTD, rtmrs=(BOOT_RTMRS[0], bytes(48), *BOOT_RTMRS[2:])))
    with pytest.raises(AttestationFailure) as err:
        match([entry], quote, BOOT)
    assert err.value.metadata["registers"] == "RTMR1"
    assert err.value.metadata["expected_rtmr1"] == BOOT_RTMRS[1].hex()
    assert err.value.message == ("Measurement mismatch: RTMR1 differs from the closest allowed boot measurements "
                                 "('sek8s' version 1.0); ensure you are running a supported VM image")


def test_no_policy_at_all_is_a_measurement_mismatch_saying_so(kit):
    quote = parse_quote(kit.quote(report_data=b"", mrtd=MRTD, rtmrs=BOOT_RTMRS))
    with pytest.raises(AttestationFailure) as err:
        match([], quote, RUNTIME)
    assert err.value.reason == f.MEASUREMENT_MISMATCH
    assert err.value.message == "Measurement mismatch: no measurement policy is configured on this validator"
    assert err.value.metadata == {"registers": "", "kind": RUNTIME}


def test_surrounding_spaces_are_ignored(kit):
    entry = MeasurementEntry.of(**fields(name=" sek8s ", version=" 1.0 ", mrtd=f" {MRTD.hex()} ",
                                         boot_rtmrs=[f" {r.hex()} " for r in BOOT_RTMRS],
                                         runtime_rtmrs=[f" {r.hex()}\n" for r in RUNTIME_RTMRS],
                                         expected_gpus=[" H100 ", " "]))
    assert (entry.name, entry.version, entry.expected_gpus) == ("sek8s", "1.0", ("h100",))
    boot = parse_quote(kit.quote(report_data=b"", mrtd=MRTD, rtmrs=BOOT_RTMRS))
    runtime = parse_quote(kit.quote(report_data=b"", mrtd=MRTD, rtmrs=RUNTIME_RTMRS))
    assert match([entry], boot, BOOT) is entry and match([entry], runtime, RUNTIME) is entry


def test_the_closest_entry_is_named_on_a_mismatch(kit):
    near = MeasurementEntry.of(**fields(name="near", boot_rtmrs=[r.hex() for r in (*BOOT_RTMRS[:3], bytes(48))]))
    far = MeasurementEntry.of(**fields(name="far", mrtd=(bytes(48)).hex(), boot_rtmrs=[bytes(48).hex()] * 4))
    quote = parse_quote(kit.quote(report_data=b"", mrtd=MRTD, rtmrs=BOOT_RTMRS))
    for entries in ([near, far], [far, near]):
        with pytest.raises(AttestationFailure) as err:
            match(entries, quote, BOOT)
        assert err.value.metadata["closest_policy"] == "near" and err.value.metadata["registers"] == "RTMR3"
        assert "RTMR3 differs from the closest allowed boot measurements ('near' version 1.0)" in err.value.message
    tie = MeasurementEntry.of(**fields(name="also-near", boot_rtmrs=[r.hex() for r in (*BOOT_RTMRS[:3], bytes(48))]))
    with pytest.raises(AttestationFailure) as err:  # equally close: the first by name, whatever the order
        match([near, tie], quote, BOOT)
    assert err.value.metadata["closest_policy"] == "also-near"


def test_a_mismatch_of_three_registers_lists_them_in_words(kit):
    entry = MeasurementEntry.of(**fields())
    quote = parse_quote(kit.quote(report_data=b"", mrtd=bytes(48), rtmrs=(bytes(48), bytes(48), *BOOT_RTMRS[2:])))
    with pytest.raises(AttestationFailure) as err:
        match([entry], quote, BOOT)
    assert err.value.message.startswith("Measurement mismatch: MRTD, RTMR0 and RTMR1 differ from the closest")
    assert err.value.metadata["kind"] == BOOT and err.value.metadata["closest_version"] == "1.0"


# -- GPUs --------------------------------------------------------------------------------------------------------
def test_an_entry_without_gpu_models_admits_any_gpu():
    entry = MeasurementEntry.of(**fields(expected_gpus=[]))
    check_gpus(entry, ["h100", "a100", "rtx4090"])  # no GPU_MISMATCH
    check_gpus(entry, [])


def test_an_entry_loaded_without_expected_gpus_admits_any_gpu(tmp_path):
    doc = fields()
    del doc["expected_gpus"], doc["gpu_count"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps([doc]))
    [entry] = load_file(path)
    assert entry.expected_gpus == () and entry.gpu_count is None
    check_gpus(entry, ["b200"])


def test_gpu_mismatch_names_the_unexpected_models_once_and_the_allowed_ones():
    entry = MeasurementEntry.of(**fields(expected_gpus=["H100", "h200"]))
    with pytest.raises(AttestationFailure) as err:
        check_gpus(entry, ["a100", "H100", "A100", "l40"])
    assert err.value.reason == f.GPU_MISMATCH
    assert err.value.message == "GPU mismatch: a100, l40 not allowed by measurement set 'sek8s' (allowed: h100, h200)"
    assert err.value.metadata == {"unexpected": "a100,l40", "allowed": "h100,h200", "policy": "sek8s"}


@pytest.mark.parametrize(("count", "ok"), [(0, False), (1, True), (8, True), (64, True), (65, False), (-1, False)])
def test_gpu_count_is_1_to_64(count, ok):
    assert (("gpu_count", "must be 1..64 when set") in problems(**fields(gpu_count=count))) is not ok
    if ok:
        check_gpus(MeasurementEntry.of(**fields(gpu_count=count)), ["h100"] * count)


def test_a_single_gpu_image_admits_one_gpu_and_refuses_two():
    entry = MeasurementEntry.of(**fields(gpu_count=1))
    check_gpus(entry, ["h100"])
    with pytest.raises(AttestationFailure) as err:
        check_gpus(entry, ["h100", "h100"])
    assert err.value.reason == f.GPU_MISMATCH
    assert err.value.message == "GPU mismatch: 2 GPUs, measurement set 'sek8s' requires 1"
    assert err.value.metadata == {"count": "2", "required": "1", "policy": "sek8s"}


# -- field limits --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("length", "ok"), [(1, True), (64, True), (65, False)])
def test_version_is_at_most_64_characters(length, ok):
    assert (("version", "required, at most 64 characters") in problems(**fields(version="v" * length))) is not ok


@pytest.mark.parametrize("version", ["", "   "])
def test_version_is_required(version):
    assert ("version", "required, at most 64 characters") in problems(**fields(version=version))


@pytest.mark.parametrize(("length", "ok"), [(1, True), (64, True), (65, False)])
def test_gpu_identifier_is_at_most_64_characters(length, ok):
    bad = ("expected_gpus[1]", "must be a non-empty gpu_identifier of at most 64 characters")
    assert (bad in problems(**fields(expected_gpus=["h100", "g" * length]))) is not ok


@pytest.mark.parametrize(("name", "ok"), [("a", True), ("a" * 128, True), ("a" * 129, False), ("-a", False),
                                          ("a b", False), ("sek8s_h100.v-1", True), ("", False)])
def test_name_rule(name, ok):
    assert (("name", "1-128 of [A-Za-z0-9_.-], starting alphanumeric") in problems(**fields(name=name))) is not ok


def test_gpu_models_must_be_a_list():
    assert problems(**fields(expected_gpus="h100")) == [("expected_gpus", "must be a list of gpu_identifier strings")]


def test_every_bad_register_is_named():
    assert problems(**fields(mrtd="ab" * 47, boot_rtmrs=["zz" * 48] + [BOOT_RTMRS[0].hex()] * 3,
                             runtime_rtmrs=[RUNTIME_RTMRS[0].hex()] * 5)) == [
        ("mrtd", "must be 96 hex characters (48 bytes)"),
        ("boot_rtmrs[0]", "must be 96 hex characters (48 bytes)"),
        ("runtime_rtmrs", "must list exactly 4 values (RTMR0..RTMR3)")]
    assert problems(**fields()) == []


# -- the measurements file ---------------------------------------------------------------------------------------
def _config_error(path) -> str:
    """What `gantry serve` prints for this GANTRY_TDX_MEASUREMENTS_FILE (its one line, without 'gantry: ')."""
    settings = Settings.from_env({"GANTRY_TDX_MEASUREMENTS_FILE": str(path)})
    with pytest.raises(ConfigError) as err:
        file_measurements(settings.attestation)
    return str(err.value)


def test_a_missing_measurements_file_stops_the_start_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"GANTRY_TDX_MEASUREMENTS_FILE does not exist: .*nowhere\.json"):
        Settings.from_env({"GANTRY_TDX_MEASUREMENTS_FILE": str(tmp_path / "nowhere.json")})
    with pytest.raises(PolicyFileError, match=r"cannot read measurements file .*nowhere\.json"):
        load_file(tmp_path / "nowhere.json")


def test_an_unreadable_measurements_file_stops_the_start_naming_it(tmp_path):
    assert _config_error(tmp_path).startswith(f"cannot read measurements file {tmp_path}: ")  # a directory
    binary = tmp_path / "m.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert _config_error(binary).startswith(f"cannot read measurements file {binary}: ")
    binary.write_text("{not json")
    assert _config_error(binary).startswith(f"cannot read measurements file {binary}: ")


@pytest.mark.parametrize(("doc", "words"), [
    ({"measurements": {"name": "x"}}, 'expected a list or {"measurements": [...]}'),
    ({"entries": []}, 'expected a list or {"measurements": [...]}'),
    ("just a string", 'expected a list or {"measurements": [...]}'),
    (42, 'expected a list or {"measurements": [...]}'),
    (None, 'expected a list or {"measurements": [...]}'),
    (["not an object"], "entry 0 lacks"),
    ([fields(), {"name": "x"}], "entry 1 lacks 'version'"),
    ([fields(name=5)], "entry 0 (5): name"),
    ([fields(version=3)], "entry 0 ('sek8s'): version"),
    ([fields(mrtd=None)], "entry 0 ('sek8s'): mrtd"),
    ([fields(mrtd=["ab"])], "entry 0 ('sek8s'): mrtd"),
    ([fields(boot_rtmrs=5)], "entry 0 ('sek8s'): boot_rtmrs"),
    ([fields(boot_rtmrs="ab" * 48)], "entry 0 ('sek8s'): boot_rtmrs"),
    ([fields(runtime_rtmrs=[1, 2, 3, 4])], "entry 0 ('sek8s'): runtime_rtmrs[0]"),
    ([fields(expected_gpus="h100")], "entry 0 ('sek8s'): expected_gpus"),
    ([fields(expected_gpus=[7])], "entry 0 ('sek8s'): expected_gpus[0]"),
    ([fields(expected_gpus={"h100": 1})], "entry 0 ('sek8s'): expected_gpus"),
    ([fields(gpu_count="8")], "entry 0 ('sek8s'): gpu_count"),
    ([fields(gpu_count=8.5)], "entry 0 ('sek8s'): gpu_count"),
    ([fields(gpu_count=True)], "entry 0 ('sek8s'): gpu_count"),
], ids=lambda x: "" if isinstance(x, str) else None)
def test_a_wrongly_shaped_measurements_file_stops_the_start_with_one_line(tmp_path, doc, words):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    message = _config_error(path)
    assert message.startswith(f"{path}: ") and words in message, message
    assert "\n" not in message
