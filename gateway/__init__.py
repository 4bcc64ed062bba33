"""onvif-gateway: re-serve legacy IP cameras as isolated, policy-controlled ONVIF devices."""

__version__ = "0.1.0"
