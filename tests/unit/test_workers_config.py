"""How many `gantry serve` workers a configuration asks for (GANTRY_WORKERS / --workers)."""
from __future__ import annotations

import os

import pytest

from gantry_server.config import ConfigError, Settings
from gantry_server.workers import worker_count

REAL = {"GANTRY_BROKER_PROVIDERS": "vastai", "GANTRY_VASTAI_API_KEY": "k"}


def test_default_is_one_per_core_with_real_providers():
    assert worker_count(Settings.from_env(REAL)) == len(os.sched_getaffinity(0))


def test_default_is_one_with_the_simulated_provider():
    assert worker_count(Settings.from_env({})) == 1


def test_explicit_count_is_kept():
    assert worker_count(Settings.from_env({**REAL, "GANTRY_WORKERS": "3"})) == 3
    assert worker_count(Settings.from_env({"GANTRY_WORKERS": "1"})) == 1


def test_more_than_one_worker_with_the_simulated_provider_is_refused():
    with pytest.raises(ConfigError, match="cannot run the simulated provider"):
        worker_count(Settings.from_env({"GANTRY_WORKERS": "2"}))


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_malformed_count_is_one_line(raw):
    with pytest.raises(ConfigError, match="GANTRY_WORKERS must be a positive number"):
        Settings.from_env({"GANTRY_WORKERS": raw})
