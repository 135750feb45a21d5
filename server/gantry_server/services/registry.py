"""Every gRPC service Gantry serves, with the class that implements it (None: nothing built yet)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from google.protobuf.descriptor import ServiceDescriptor

from . import base


@dataclass(frozen=True)
class ServiceSpec:
    module: str  # generated *_pb2_grpc module
    name: str  # service name inside it
    impl: str | None  # "module:Class" of the implementation, relative to gantry_server.services

    @property
    def grpc_module(self):
        return importlib.import_module(self.module)

    @property
    def descriptor(self) -> ServiceDescriptor:
        pb2 = importlib.import_module(self.module.removesuffix("_grpc"))
        return pb2.DESCRIPTOR.services_by_name[self.name]

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name

    @property
    def base_class(self) -> type:
        return getattr(self.grpc_module, f"{self.name}Servicer")

    @property
    def add_to_server(self) -> Callable:
        return getattr(self.grpc_module, f"add_{self.name}Servicer_to_server")

    def impl_class(self) -> type:
        if self.impl is None:  # nothing built yet: every RPC becomes an UNIMPLEMENTED stub
            return type(f"Unbuilt{self.name}", (self.base_class,), {"__init__": lambda self_, rt: None})
        module, cls = self.impl.split(":")
        return getattr(importlib.import_module(f"gantry_server.services.{module}"), cls)

    def servicer_class(self) -> type:
        return base.complete(self.impl_class(), self.base_class, self.descriptor)

    def implemented_methods(self) -> set[str]:
        return base.implemented(self.impl_class(), self.base_class, self.descriptor)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("gantry.ops.v1.ops_pb2_grpc", "OpsService", "ops:OpsService"),
    ServiceSpec("gantry.admin.v1.admin_pb2_grpc", "AdminService", "admin:AdminService"),
    ServiceSpec("gantry.instances.v1.instances_pb2_grpc", "InstanceService", "instances:InstanceService"),
    ServiceSpec("gantry.servers.v1.servers_pb2_grpc", "ServerService", "servers:ServerService"),
    ServiceSpec("gantry.miner.v1.miner_pb2_grpc", "MinerService", "miner:MinerService"),
    ServiceSpec("gantry.broker.v1.inventory_pb2_grpc", "InventoryService", "inventory:InventoryService"),
    ServiceSpec("gantry.broker.v1.templates_pb2_grpc", "TemplateService", "templates:TemplateService"),
    ServiceSpec("gantry.broker.v1.sessions_pb2_grpc", "SessionService", "sessions:SessionService"),
    ServiceSpec("gantry.broker.v1.costs_pb2_grpc", "CostService", "costs:CostService"),
)
