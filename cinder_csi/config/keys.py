"""Every cloud.conf section and key that the upstream Go driver or the in-tree provider accepts.

Upstream reads cloud.conf with gcfg in "fatal only" mode: a key it does not know is skipped, so
configs carried over from the in-tree provider (with [LoadBalancer], `bs-version`, ...) keep
working. We accept the same keys: those we use take effect, the others are reported once as
ignored. A key neither knows is an error, so a typo never silently drops a setting.

Sources: kubernetes/cloud-provider-openstack `pkg/client/client.go` (AuthOpts, every [Global]
key), `pkg/csi/cinder/openstack/openstack.go` ([BlockStorage]), `pkg/openstack/openstack.go`
([LoadBalancer], [LoadBalancerClass "name"], [Networking], [Route], [Metadata]) and the in-tree
provider (`bs-version`, `trust-device-path`, `secret-name`, ...).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    name: str  # canonical spelling, as the docs write it
    used: frozenset[str]  # keys that change what we do
    ignored: frozenset[str]  # keys upstream or the in-tree provider accept, meaningless here
    named: bool = False  # may appear as [Name "subsection"]
    unnamed: bool = True  # may appear as plain [Name]

    @property
    def keys(self) -> frozenset[str]:
        return self.used | self.ignored


GLOBAL = Section(
    "Global",
    used=frozenset({
        "auth-url", "username", "user-id", "password",
        "tenant-id", "tenant-name", "tenant-domain-id", "tenant-domain-name",
        # openstacksdk spellings of the tenant-* keys, accepted as aliases
        "project-id", "project-name", "project-domain-id", "project-domain-name",
        "domain-id", "domain-name", "user-domain-id", "user-domain-name",
        "trust-id", "trustee-id", "trustee-password",
        "application-credential-id", "application-credential-name",
        "application-credential-secret",
        "region", "os-endpoint-type", "ca-file", "cert-file", "key-file", "tls-insecure",
        "use-clouds", "clouds-file", "cloud",
    }),
    ignored=frozenset({
        # in-tree provider: credentials read from a Kubernetes Secret by the provider itself
        "secret-name", "secret-namespace", "kubeconfig-path",
        # a static token expires; upstream never used it for a long-running service
        "token",
    }),
    named=True,
)

BLOCK_STORAGE = Section(
    "BlockStorage",
    used=frozenset({
        "node-volume-attach-limit", "rescan-on-resize", "ignore-volume-az",
        "ignore-volume-microversion",
    }),
    # in-tree provider: Cinder v1/v2 selection, and trusting Nova's device path
    ignored=frozenset({"bs-version", "trust-device-path"}),
)

METADATA = Section("Metadata", used=frozenset({"search-order", "request-timeout"}),
                   ignored=frozenset())

# The cloud controller manager's sections: load balancers, routes and node addresses.
_LB_CLASS_KEYS = frozenset({
    "floating-network-id", "floating-subnet-id", "floating-subnet", "floating-subnet-tags",
    "network-id", "subnet-id", "member-subnet-id",
})
LOAD_BALANCER = Section(
    "LoadBalancer",
    used=frozenset(),
    ignored=_LB_CLASS_KEYS | frozenset({
        "enabled", "lb-version", "use-octavia", "lb-method", "lb-provider", "create-monitor",
        "monitor-delay", "monitor-timeout", "monitor-max-retries", "monitor-max-retries-down",
        "manage-security-groups", "node-security-group", "internal-lb", "node-selector",
        "cascade-delete", "flavor-id", "availability-zone", "enable-ingress-hostname",
        "ingress-hostname-suffix", "max-shared-lb", "container-store",
        "default-tls-container-ref", "provider-requires-serial-api-calls",
    }),
)
LOAD_BALANCER_CLASS = Section("LoadBalancerClass", used=frozenset(), ignored=_LB_CLASS_KEYS,
                              named=True, unnamed=False)
NETWORKING = Section(
    "Networking",
    used=frozenset(),
    ignored=frozenset({"ipv6-support-disabled", "public-network-name", "internal-network-name",
                       "address-sort-order"}),
)
ROUTE = Section("Route", used=frozenset(), ignored=frozenset({"router-id"}))

SECTIONS: dict[str, Section] = {
    s.name.lower(): s
    for s in (GLOBAL, BLOCK_STORAGE, METADATA, LOAD_BALANCER, LOAD_BALANCER_CLASS, NETWORKING,
              ROUTE)
}


def nearest(word: str, candidates: frozenset[str] | list[str]) -> str | None:
    """The known spelling closest to a misspelt one, if any is close enough to suggest."""
    found = difflib.get_close_matches(word.lower(), sorted(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_section_hint(name: str) -> str:
    compact = {k.replace("-", "").replace("_", ""): k for k in SECTIONS}
    guess = compact.get(name.lower().replace("-", "").replace("_", "").replace(" ", ""))
    guess = guess or nearest(name, list(SECTIONS))
    if guess is None:
        return f"known sections: {', '.join(s.name for s in SECTIONS.values())}"
    return f"did you mean [{SECTIONS[guess].name}]?"


def unknown_key_hint(section: Section, key: str) -> str:
    elsewhere = [s.name for s in SECTIONS.values() if s is not section and key in s.keys]
    if elsewhere:
        return f"it belongs in [{elsewhere[0]}]"
    guess = nearest(key, section.keys)
    if guess is not None:
        return f"did you mean {guess!r}?"
    return f"[{section.name}] takes: {', '.join(sorted(section.keys)) or 'no keys'}"
