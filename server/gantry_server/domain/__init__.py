"""Domain logic, importable without gRPC: services call it, it calls store/providers."""
