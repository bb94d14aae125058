"""The stand-in's one storage backend, as Cinder's scheduler sees it: which volume types it
serves (``volume_backend_name``) and how much room it has. A volume no backend can take ends
in ``error`` ("Could not find any available weighted backend"), a retype to such a type is
rolled back."""

from __future__ import annotations

from dataclasses import dataclass

from .models import VolumeType

BACKEND_NAME_SPEC = "volume_backend_name"


@dataclass(frozen=True)
class Backend:
    name: str = "lvmdriver-1"
    capacity_gb: int = 50_000

    @property
    def host(self) -> str:
        """``os-vol-host-attr:host``, as admins see it."""
        return f"standin@{self.name}#{self.name}"

    def serves(self, vtype: VolumeType) -> bool:
        wanted = vtype.extra_specs.get(BACKEND_NAME_SPEC)
        return wanted is None or wanted == self.name

    def has_room(self, size_gb: int, allocated_gb: int) -> bool:
        return allocated_gb + size_gb <= self.capacity_gb
