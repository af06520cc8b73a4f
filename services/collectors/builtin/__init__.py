"""The built-in collectors, one module each (registered in services.collectors.contract)."""
