"""Direct unit tests of the pure translation code in ``adapters``: no server, no network."""
