"""A local, strict imitation of the Cloud Armor part of the compute v1 API.

Standard library only; imports nothing from the product.  See README.md.
"""
from .errors import ApiError
from .faults import FaultConfig
from .routes import ROUTES, SYSTEM_PARAMS, Route
from .server import LocalCloudArmor
from .state import CloudArmorState

__all__ = [
           "ROUTES",
           "SYSTEM_PARAMS",
           "ApiError",
           "CloudArmorState",
           "FaultConfig",
           "LocalCloudArmor",
           "Route",
]
