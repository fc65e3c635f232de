"""One module per provider wire format, all behind the interface in adapters.base."""
