"""The clouds one controller serves, by name, as upstream's multi-cloud has them.

``""`` is the plain ``[Global]`` section (or the clouds.yaml entry of --cloud); every
``[Global "name"]`` section is another cloud. A CSI request picks one with the secret
``cloud: name`` (upstream's key); a request without it uses the default cloud. A name we do not
serve is refused: answering "not found, so deleted" for a volume that lives in a cloud we were
not told about would let Kubernetes forget a volume that still exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from cinder_csi import errors
from cinder_csi.cloud.connection import Cloud
from cinder_csi.config import DEFAULT_CLOUD, AuthSettings

# The key of a CSI request's secrets that names the cloud, as upstream reads it.
CLOUD_SECRET_KEY = "cloud"


class CloudSet:
    def __init__(self, clouds: Mapping[str, Cloud]) -> None:
        if not clouds:
            raise errors.InvalidArgument("no cloud configured")
        self._clouds = dict(clouds)

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, AuthSettings],
        factory: Callable[[AuthSettings], Cloud] = Cloud,
    ) -> CloudSet:
        return cls({name: factory(auth) for name, auth in settings.items()})

    @classmethod
    def single(cls, cloud: Cloud) -> CloudSet:
        return cls({DEFAULT_CLOUD: cloud})

    def names(self) -> list[str]:
        """Sorted, the default ("") first: the order of multi-cloud listings."""
        return sorted(self._clouds)

    def __iter__(self) -> Iterator[tuple[str, Cloud]]:
        return ((name, self._clouds[name]) for name in self.names())

    def __len__(self) -> int:
        return len(self._clouds)

    def named(self, name: str) -> Cloud:
        cloud = self._clouds.get(name)
        if cloud is None:
            served = ", ".join(repr(n) if n else "the default [Global]" for n in self.names())
            wanted = f"cloud {name!r}" if name else "the default cloud ([Global])"
            raise errors.InvalidArgument(
                f"{wanted} is not configured here (this controller serves {served}); add a "
                f'[Global "{name}"] section to cloud.conf, or fix the "{CLOUD_SECRET_KEY}" key '
                "of the StorageClass secret"
            )
        return cloud

    @staticmethod
    def name_in(secrets: Mapping[str, str]) -> str:
        return str(secrets.get(CLOUD_SECRET_KEY, DEFAULT_CLOUD))

    def for_secrets(self, secrets: Mapping[str, str]) -> Cloud:
        return self.named(self.name_in(secrets))

    def probe(self) -> str | None:
        """None while some cloud answers, else why none does. One cloud being down must not
        make the controller look dead (and be restarted): it still serves the others, and a
        restart would not bring that cloud back."""
        problems = []
        for name, cloud in self:
            problem = cloud.probe()
            if problem is None:
                return None
            problems.append(self._named_problem(name, cloud, problem))
        return "; ".join(problems)

    def health(self) -> str | None:
        """For the liveness check: None, or which cloud clients look wedged. Unlike probe(),
        any one wedged client fails it: its calls would hang until a restart, and a restart
        is what cures a wedged client (a cloud that refuses or answers errors does not count,
        see Cloud.health)."""
        problems = []
        for name, cloud in self:
            problem = cloud.health()
            if problem is not None:
                problems.append(self._named_problem(name, cloud, problem))
        return "; ".join(problems) or None

    def _named_problem(self, name: str, cloud: Cloud, problem: str) -> str:
        return f"{cloud.auth.section()}: {problem}" if len(self) > 1 or name else problem
