"""BEV shared library: settings, secrets, RPC over NATS and gRPC, telemetry, engines, test fixtures."""

__version__ = "0.1.0"
