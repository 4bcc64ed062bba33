"""Former home of the Digest implementation, now :mod:`gateway.digest`.

Kept only so ``gateway.commands`` (owned by the lead, who switches its import at the merge)
keeps importing; nothing else may use it.
"""

from gateway.digest import DigestClient

__all__ = ["DigestClient"]
