"""Template extra_filters, what a template implies for inventory and sessions, and the template catalogue."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from gantry_server.broker.templates import (
    Condition, TemplateCatalog, derive_offer_filters, host_properties, matches, parse_extra_filters,
    ssh_timeout_minutes_for_image,
)
from gantry_server.clock import ManualClock
from gantry_server.errors import FailedPrecondition, NotFound, Unavailable
from tests.fakes.memory_provider import MemoryProvider, offer, template, transient

HOST = {"cuda_max_good": 12.4, "num_gpus": 2, "gpu_name": "RTX 4090", "cpu_arch": "amd64", "verified": True,
        "compute_cap": 890, "gpu_total_ram": 49152}


def ok(filters: str, props: dict = HOST) -> bool:
    return matches(parse_extra_filters(filters), props)


@pytest.mark.parametrize(("filters", "expected"), [
    ('{"cuda_max_good": {"gte": 12.4}}', True),
    ('{"cuda_max_good": {"gte": 12.9}}', False),
    ('{"cuda_max_good": {"gt": 12.4}}', False),
    ('{"cuda_max_good": {"lt": 13}}', True),
    ('{"cuda_max_good": {"lte": 12.3}}', False),
    ('{"gpu_name": {"eq": "rtx 4090"}}', True),  # string equality ignores case
    ('{"gpu_name": {"neq": "RTX 4090"}}', False),
    ('{"cpu_arch": {"in": ["arm64", "amd64"]}}', True),
    ('{"cpu_arch": {"notin": ["amd64"]}}', False),
    ('{"verified": {"eq": true}}', True),
    ('{"verified": true}', True),  # a bare value is eq
    ('{"compute_cap": {"gte": 800, "lt": 900}}', True),  # several operators on one key: all must hold
    ('{"compute_cap": {"gte": 800, "lt": 850}}', False),
    ('{}', True),
])
def test_operators(filters, expected):
    assert ok(filters) is expected


def test_every_key_counts_not_only_cuda_and_vram():
    """Reference defect 19: inventory ignored cpu_arch, compute_cap and every other key."""
    assert not ok('{"cuda_max_good": {"gte": 12}, "cpu_arch": {"in": ["arm64"]}}')


@pytest.mark.parametrize("num_gpus", [2, "2", 2.0])
def test_num_gpus_compares_as_a_number_whatever_its_type(num_gpus):
    """Reference defect 18: num_gpus was a string there, so numeric filters never matched."""
    props = {**HOST, "num_gpus": num_gpus}
    assert ok('{"num_gpus": {"gte": 2}}', props) and ok('{"num_gpus": {"eq": 2}}', props)
    assert not ok('{"num_gpus": {"gt": 2}}', props)


def test_text_never_satisfies_a_numeric_comparison():
    assert not ok('{"cpu_arch": {"gte": 1}}')


def test_a_property_the_host_lacks_is_skipped():
    assert ok('{"static_ip": {"eq": true}, "inet_down": {"gte": 500}}')


def test_malformed_filters_are_ignored_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="gantry_server.broker.templates"):
        assert parse_extra_filters("{not json", source="h1") == ()
        assert parse_extra_filters("[1, 2]", source="h2") == ()
        assert parse_extra_filters('{"cuda_max_good": {"approx": 12}}', source="h3") == ()
    assert len(caplog.records) == 3
    assert ok("{not json")  # no usable filters: compatible with everything


def test_host_properties_always_carry_the_deciding_keys():
    props = host_properties(offer("tensordock", "t1", gpu_type="A100", gpu_count=2, vram_gb=80, price_per_hour=2.5))
    assert props["num_gpus"] == 2 and props["gpu_ram"] == 80 * 1024 and props["gpu_total_ram"] == 2 * 80 * 1024
    assert props["gpu_name"] == "A100" and props["dph_total"] == 2.5
    assert "cuda_max_good" not in props  # no CUDA data: not invented
    vast = host_properties(offer("vastai", "1", cuda_version=12.8, host_properties={"gpu_name": "RTX 4090 D",
                                                                                       "num_gpus": "1"}))
    assert vast["cuda_max_good"] == 12.8 and vast["gpu_name"] == "RTX 4090 D"  # the adapter's values win


def test_derived_inventory_filters():
    d = derive_offer_filters(parse_extra_filters('{"cuda_max_good": {"gte": 12.9}, "gpu_total_ram": {"gte": 40000}}'))
    assert (d.min_cuda, d.min_vram) == (12.9, 40)
    strict = derive_offer_filters(parse_extra_filters('{"gpu_total_ram": {"gt": 24576}}'))
    assert strict.min_vram == 25  # more than 24 GB
    assert derive_offer_filters([Condition("cuda_max_good", "lt", 13)]).min_cuda is None


@pytest.mark.parametrize(("image", "minutes"), [
    ("vllm/vllm-openai:latest", 15), ("nvcr.io/nvidia/nemo:24.05", 15), ("megatron-lm", 15),
    ("ghcr.io/huggingface/text-generation-inference:2.0", 12), ("my/tgi-server", 12),
    ("nvcr.io/nvidia/tensorrt:24.01", 12), ("deepspeed/deepspeed", 12), ("nvcr.io/nvidia/tritonserver", 12),
    ("vastai/ollama", 12), ("VLLM/VLLM-OPENAI", 15), ("nvidia/cuda:12.6.3-runtime-ubuntu22.04", 10), ("", 10),
    (None, 10),
])
def test_heavy_images_get_longer_ssh_timeouts(image, minutes):
    assert ssh_timeout_minutes_for_image(image) == minutes


def test_the_default_timeout_is_the_callers():
    assert ssh_timeout_minutes_for_image("ubuntu", default=20) == 20


T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


async def test_catalogue_caches_an_hour_and_finds_by_hash():
    clock = ManualClock(T0)
    vast = MemoryProvider("vastai", templates=[template("h1"), template("h2", name="vLLM", image="vllm/vllm-openai")])
    catalog = TemplateCatalog({"vastai": vast}, clock)
    assert [t.hash_id for t in await catalog.list()] == ["h1", "h2"]
    vast.templates.append(template("h3"))
    clock.advance(minutes=59)
    with pytest.raises(NotFound, match="template not found: h3"):
        await catalog.get("h3")
    clock.advance(minutes=2)
    assert (await catalog.get("h3")).hash_id == "h3"


async def test_catalogue_errors_are_not_cached_beyond_a_short_backoff():
    clock = ManualClock(T0)
    vast = MemoryProvider("vastai", templates=[template("h1")])
    vast.fail_templates_with = transient("vastai", operation="list_templates")
    catalog = TemplateCatalog({"vastai": vast}, clock)
    with pytest.raises(Unavailable, match="failed to list templates"):
        await catalog.list()
    vast.fail_templates_with = None
    clock.advance(seconds=6)
    assert len(await catalog.list()) == 1


async def test_without_a_template_provider_the_catalogue_says_so():
    catalog = TemplateCatalog({"tensordock": MemoryProvider("tensordock")}, ManualClock(T0))
    with pytest.raises(FailedPrecondition, match=r"no template provider configured \(vastai\)"):
        await catalog.list()
