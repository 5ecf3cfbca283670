"""I/O edge of returnrisk: data contract, validation, sources, DVC stage entry points, CLI."""
