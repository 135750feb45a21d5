"""Fake Vast.ai and TensorDock servers speaking the providers' real wire formats, for tests of every layer.

Real HTTP on 127.0.0.1 (never mocks of httpx): point a provider adapter, or a Gantry process through
GANTRY_VASTAI_BASE_URL / GANTRY_TENSORDOCK_BASE_URL, at `fake.base_url`. See base.py for the shared knobs
(instances, call counts, injected failures, SSH-server hooks) and each module for its provider's quirks.

`SshHostPool` (tests.fakes.ssh_hosts, imported on its own: it starts real SSH servers) backs fake instances with
real SSH hosts.
"""
from .asgi import FakeHttpServer, Request, Response
from .base import FakeInstance, FakeProvider, Recorded
from .sleep import ManualSleep
from .tensordock import NO_PUBLIC_IPS, SOLD_OUT, FakeTensorDock, installed_keys, td_gpu
from .vastai import RATE_LIMIT_BODY, FakeVastAi

__all__ = ["FakeHttpServer", "FakeInstance", "FakeProvider", "FakeTensorDock", "FakeVastAi", "ManualSleep",
           "NO_PUBLIC_IPS", "RATE_LIMIT_BODY", "Recorded", "Request", "Response", "SOLD_OUT", "installed_keys", "td_gpu"]
