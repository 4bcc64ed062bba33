"""Egress isolation of the camera network: nftables ruleset, DNS sinkhole, NTP, report.

Entry points for the rest of the gateway:

- ``start_egress_services(config, store) -> EgressServices`` (``await services.close()``)
- ``egress_report(config, store) -> dict``
"""

from gateway.egress.report import egress_report
from gateway.egress.services import EgressServices, start_egress_services

__all__ = ["EgressServices", "egress_report", "start_egress_services"]
