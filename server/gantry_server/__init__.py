"""Gantry server: the grpc.aio control plane (validator face and broker face)."""
