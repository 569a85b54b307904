"""Neural-network building blocks. `minigen.nn.functional` holds the stateless operations."""
from . import functional  # noqa: F401
