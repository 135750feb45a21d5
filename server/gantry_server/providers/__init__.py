"""GPU provider adapters (Vast.ai, TensorDock, simulated) behind one interface: providers.base.GpuProvider."""
