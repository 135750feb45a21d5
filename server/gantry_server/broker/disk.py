"""How much disk a session needs for its model: the estimate behind the 400 `insufficient_disk`.

    est = estimate_disk("meta-llama/Llama-2-70b-hf")
    est.minimum_gb, est.recommended_gb                     # (225, 270)

minimum = weights + 50 % download buffer + docker image (15 GB with a template, else 10) + 5 GB system;
recommended = ceil(minimum x 1.2) rounded up to the next 5; a template's recommended disk is a floor for
both. No estimate (None) when neither the model id reveals a parameter count nor a template recommends a
disk: the caller then uses the provider's default disk.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

DOWNLOAD_BUFFER = 0.5
DOCKER_IMAGE_GB = 10.0
DOCKER_IMAGE_TEMPLATED_GB = 15.0
SYSTEM_OVERHEAD_GB = 5.0
RECOMMENDED_FACTOR = 1.2

# Bytes per parameter by quantization; None/unknown is fp16.
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0, "float32": 4.0,
    "fp16": 2.0, "float16": 2.0, "bf16": 2.0, "bfloat16": 2.0,
    "fp8": 1.0, "int8": 1.0, "8bit": 1.0, "q8": 1.0, "gguf-q8": 1.0,
    "awq": 0.5625, "gptq": 0.5625,
    "int4": 0.5, "4bit": 0.5, "q4": 0.5, "gguf": 0.5, "gguf-q4": 0.5, "nf4": 0.5,
}
DEFAULT_QUANTIZATION = "fp16"

# Quantization named in the model id, e.g. "TheBloke/Llama-2-70B-AWQ".
_QUANT_IN_ID = re.compile(r"(?:^|[-_./])(awq|gptq|fp8|int8|int4)(?=$|[-_./])", re.I)
# "8x7B" (mixture of experts: 8 x 7 = 56), then "70b", "1.1B", "350M", delimited by - _ / . or the ends.
_MOE = re.compile(r"(?:^|[-_/.])(\d+)x(\d+(?:\.\d+)?)b(?=$|[-_/.])", re.I)
_PARAMS = re.compile(r"(?:^|[-_/])(\d+(?:\.\d+)?)([bm])(?=$|[-_/.])", re.I)

# Models whose id does not carry the parameter count; longest key first so "deepseek-v2-lite" beats
# "deepseek-v2". Billions of parameters.
KNOWN_MODELS: tuple[tuple[str, float], ...] = tuple(sorted({
    "deepseek-r1": 671, "deepseek-v3": 671, "deepseek-v2.5": 236, "deepseek-v2-lite": 16, "deepseek-v2": 236,
    "mixtral-8x22b": 176, "mixtral-8x7b": 56, "llama-3.1-405b": 405, "falcon-180b": 180, "falcon-40b": 40,
    "yi-34b": 34, "grok-1": 314, "dbrx": 132, "kimi-k2": 1000, "phi-2": 2.7, "phi-3-mini": 3.8,
    "phi-3-small": 7, "phi-3-medium": 14, "gpt2-xl": 1.5, "gpt2-large": 0.774, "gpt2-medium": 0.355,
    "gpt2": 0.124, "bloom": 176,
}.items(), key=lambda kv: -len(kv[0])))


@dataclass(frozen=True)
class DiskEstimate:
    """Mirrors proto gantry.broker.v1.DiskEstimate (sessions.proto)."""

    model_weight_gb: float
    download_buffer_gb: float
    docker_image_gb: float
    system_overhead_gb: float
    minimum_gb: int
    recommended_gb: int
    template_floor_gb: int | None = None
    model_id: str | None = None
    quantization: str | None = None
    param_count_b: float | None = None

    def proto_fields(self) -> dict:
        """Keyword arguments for `sessions_pb2.DiskEstimate(**...)` (unset optionals left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def param_count_b(model_id: str | None) -> float | None:
    """Billions of parameters named by a model id, or from the known-model table; None when unknown.

    >>> param_count_b("mistralai/Mixtral-8x7B-Instruct-v0.1"), param_count_b("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    (56.0, 1.1)
    """
    if not model_id:
        return None
    name = model_id.strip().rsplit("/", 1)[-1]
    if m := _MOE.search(name):
        return int(m.group(1)) * float(m.group(2))
    if m := _PARAMS.search(name):
        value = float(m.group(1))
        return value if m.group(2).lower() == "b" else value / 1000
    lowered = name.lower()
    for key, billions in KNOWN_MODELS:
        if key in lowered:
            return float(billions)
    return None


def quantization_of(model_id: str | None, quantization: str | None) -> str:
    """The quantization asked for, else the one the id names (-AWQ, -GPTQ, -FP8, -INT8, -INT4), else fp16."""
    if quantization and quantization.strip():
        return quantization.strip().lower()
    if model_id and (m := _QUANT_IN_ID.search(model_id.rsplit("/", 1)[-1])):
        return m.group(1).lower()
    return DEFAULT_QUANTIZATION


def _round_up_to_5(value: float) -> int:
    return int(math.ceil(value / 5) * 5)


def estimate_disk(model_id: str | None, quantization: str | None = None, *, templated: bool = False,
                  template_disk_gb: int | None = None) -> DiskEstimate | None:
    """The disk a model needs; None when there is nothing to estimate from.

    `templated`: the session uses a template (bigger images); `template_disk_gb`: its recommended disk.

    >>> e = estimate_disk("meta-llama/Llama-2-70b-hf"); (e.minimum_gb, e.recommended_gb, e.model_weight_gb)
    (225, 270, 140.0)
    """
    floor = template_disk_gb if template_disk_gb and template_disk_gb > 0 else None
    params = param_count_b(model_id)
    if params is None:
        if floor is None:
            return None
        return DiskEstimate(0.0, 0.0, 0.0, 0.0, floor, floor, template_floor_gb=floor,
                            model_id=model_id or None)
    quant = quantization_of(model_id, quantization)
    weights = round(params * BYTES_PER_PARAM.get(quant, BYTES_PER_PARAM[DEFAULT_QUANTIZATION]), 3)
    buffer = round(weights * DOWNLOAD_BUFFER, 3)
    image = DOCKER_IMAGE_TEMPLATED_GB if templated or floor else DOCKER_IMAGE_GB
    minimum = math.ceil(round(weights + buffer + image + SYSTEM_OVERHEAD_GB, 6))
    recommended = _round_up_to_5(math.ceil(round(minimum * RECOMMENDED_FACTOR, 6)))
    if floor is not None:
        minimum, recommended = max(minimum, floor), max(recommended, floor)
    return DiskEstimate(weights, buffer, image, SYSTEM_OVERHEAD_GB, minimum, recommended,
                        template_floor_gb=floor, model_id=model_id, quantization=quant, param_count_b=params)
