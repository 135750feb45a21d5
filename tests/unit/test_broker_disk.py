"""Disk estimate (domain-broker Part 2 §3.3): what POST /sessions compares disk_gb against."""
from __future__ import annotations

import pytest

from gantry_server.broker.disk import estimate_disk, param_count_b, quantization_of


@pytest.mark.parametrize(("model_id", "billions"), [
    ("meta-llama/Llama-2-70b-hf", 70),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", 8),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1.1),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", 56),
    ("mistralai/Mixtral-8x22B-v0.1", 176),
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.5),
    ("facebook/opt-350m", 0.35),
    ("deepseek-ai/DeepSeek-R1", 671),  # known-model table: the id has no count
    ("deepseek-ai/DeepSeek-V2-Lite", 16),  # the longer table key wins over "deepseek-v2"
    ("deepseek-ai/DeepSeek-V2.5", 236),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 7),  # a count in the id beats the table
    ("tiiuae/falcon-180B", 180),
])
def test_parameter_count_is_read_from_the_model_id(model_id, billions):
    assert param_count_b(model_id) == pytest.approx(billions)


@pytest.mark.parametrize("model_id", ["", None, "some-org/my-model", "Qwen/Qwen1.5-MoE-A2.7B", "llama3:latest"])
def test_unknown_models_have_no_parameter_count(model_id):
    assert param_count_b(model_id) is None


def test_llama_2_70b_needs_225_gb_and_recommends_270():
    est = estimate_disk("meta-llama/Llama-2-70b-hf")
    assert (est.minimum_gb, est.recommended_gb) == (225, 270)
    assert (est.model_weight_gb, est.download_buffer_gb, est.docker_image_gb, est.system_overhead_gb) == (
        140, 70, 10, 5)
    assert est.quantization == "fp16" and est.param_count_b == 70 and est.template_floor_gb is None


@pytest.mark.parametrize(("model_id", "quantization", "expected"), [
    ("TheBloke/Llama-2-70B-AWQ", None, "awq"),
    ("TheBloke/Llama-2-70B-GPTQ", None, "gptq"),
    ("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", None, "fp8"),
    ("some/Model-7B-INT4", None, "int4"),
    ("some/Model-7B-INT8", None, "int8"),
    ("meta-llama/Llama-2-7b-hf", None, "fp16"),
    ("meta-llama/Llama-2-7b-hf", "BF16", "bf16"),  # asked for beats the id
    ("TheBloke/Llama-2-70B-AWQ", "fp32", "fp32"),
])
def test_quantization_is_given_or_inferred_from_the_id(model_id, quantization, expected):
    assert quantization_of(model_id, quantization) == expected


@pytest.mark.parametrize(("quantization", "weights"), [
    ("fp32", 280), ("fp16", 140), ("bf16", 140), ("fp8", 70), ("int8", 70), ("awq", 39.375), ("gptq", 39.375),
    ("int4", 35), ("gguf-q4", 35), ("something-new", 140),
])
def test_bytes_per_parameter_follow_the_quantization(quantization, weights):
    assert estimate_disk("meta-llama/Llama-2-70b-hf", quantization).model_weight_gb == pytest.approx(weights)


def test_minimum_rounds_up_and_recommended_is_the_next_multiple_of_5():
    est = estimate_disk("TinyLlama/TinyLlama-1.1B-Chat-v1.0")  # 2.2 + 1.1 + 10 + 5 = 18.3
    assert (est.minimum_gb, est.recommended_gb) == (19, 25)  # ceil(19 * 1.2) = 23 -> 25


def test_a_template_means_a_bigger_image_and_its_disk_is_a_floor():
    est = estimate_disk("meta-llama/Llama-2-7b-hf", templated=True, template_disk_gb=100)
    assert est.docker_image_gb == 15
    assert (est.minimum_gb, est.recommended_gb, est.template_floor_gb) == (100, 100, 100)
    bigger = estimate_disk("meta-llama/Llama-2-70b-hf", templated=True, template_disk_gb=32)
    assert (bigger.minimum_gb, bigger.recommended_gb) == (230, 280)  # above the floor: unchanged by it


def test_only_a_template_disk_still_gives_an_estimate():
    est = estimate_disk(None, template_disk_gb=32)
    assert (est.minimum_gb, est.recommended_gb, est.template_floor_gb) == (32, 32, 32)


def test_nothing_to_estimate_from_gives_none():
    assert estimate_disk(None) is None
    assert estimate_disk("my-org/custom-model", template_disk_gb=0) is None


def test_proto_fields_build_the_proto_breakdown():
    from gantry.broker.v1 import sessions_pb2

    msg = sessions_pb2.DiskEstimate(**estimate_disk("meta-llama/Llama-2-70b-hf").proto_fields())
    assert msg.minimum_gb == 225 and msg.model_id == "meta-llama/Llama-2-70b-hf"
    assert not msg.HasField("template_floor_gb")
