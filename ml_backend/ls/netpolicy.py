"""Which network addresses image downloads may reach: the guard against server-side request
forgery. Image URLs come from task data and /predict requests, so without it anyone who can edit
a task could make the backend fetch from its own loopback ports, the private network it runs in
or a cloud metadata service, and read the answer back through the analysis.

Hosts other than Label Studio's own origin (the caller allows that one) are reached only when
every address they resolve to is public, or when DOWNLOAD_ALLOW names the host, the address or a
network holding it. Cloud metadata services are refused even then: no image lives there. The
caller connects to the addresses checked here, never resolving the name again, so a name cannot
pass the check with a public address and then connect to a private one (DNS rebinding).
Standard library only.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                            "instance-data.ec2.internal"})
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task credentials
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud
    "168.63.129.16",  # Azure WireServer (a public address, reachable only inside Azure)
)))
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598); Python calls it neither
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses reached through a NAT64 gateway
_IETF = ipaddress.ip_network("192.0.0.0/24")  # IETF protocol assignments; Python 3.11 calls most of it global
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


class AddressRefused(Exception):
    """The policy forbids a host; the message names the host, its address and DOWNLOAD_ALLOW."""


def classify(address: Address) -> str:
    """'public', or the kind of address downloads may not reach by default: 'cloud metadata',
    'unspecified', 'loopback', 'link-local', 'multicast', 'shared', 'private', 'site-local',
    'reserved' or 'special-purpose'. IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64)
    are judged by that address."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    inner = embedded_ipv4(address)
    if inner is not None:
        return classify(inner)
    kinds = (("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
             ("link-local", address.is_link_local), ("multicast", address.is_multicast),
             ("shared", address in _SHARED), ("private", address.is_private),
             ("site-local", address.version == 6 and address.is_site_local), ("reserved", address.is_reserved))
    for kind, hit in kinds:
        if hit:
            return kind
    # is_global also leaves out IANA's other special-purpose blocks (documentation, benchmarking).
    return "public" if address.is_global and address not in _IETF else "special-purpose"


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (::ffff:a.b.c.d, 2002:AABB:CCDD::/48,
    64:ff9b::a.b.c.d), else None."""
    if address.version == 4:
        return None
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to, in the system's order of preference (an IP literal,
    decimal and octal forms included, is its own address). Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


@dataclass(frozen=True)
class DownloadPolicy:
    """Hosts and networks DOWNLOAD_ALLOW opens although they are not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, allow: str) -> DownloadPolicy:
        """From DOWNLOAD_ALLOW: comma-separated host names, IP addresses and CIDR networks."""
        hosts, networks = set(), []
        for entry in filter(None, (item.strip() for item in allow.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if not _HOST_NAME.fullmatch(_name(entry)):
                    raise ValueError(f"DOWNLOAD_ALLOW entry {entry!r} is not a host name, IP address or CIDR "
                                     "network") from None
                hosts.add(_name(entry))
        return cls(frozenset(hosts), tuple(networks))

    def addresses(self, host: str, port: int) -> list[Address]:
        """The addresses to connect to for ``host``, resolved once, each one checked. Raises
        AddressRefused when the policy forbids any of them, OSError when the name does not resolve."""
        name = _name(host)
        if name in METADATA_HOSTS:
            raise AddressRefused(f"{host} is a cloud metadata service, which image downloads never reach")
        found = resolve(name, port)
        for address in found:
            kind = classify(address)
            where = str(address) if str(address) == name else f"{host} resolves to {address}, which"
            if kind == "cloud metadata":
                raise AddressRefused(f"{where} is a cloud metadata service, which image downloads never reach")
            if kind != "public" and name not in self.hosts and not self.allows(address):
                raise AddressRefused(
                    f"{where} is not a public address ({kind}); image downloads reach it only if DOWNLOAD_ALLOW "
                    "names the host, the address or its network")
        return found

    def allows(self, address: Address) -> bool:
        """Whether a network in DOWNLOAD_ALLOW holds the address (or the IPv4 address it carries)."""
        forms = [address, embedded_ipv4(address)]
        return any(form in network for network in self.networks for form in forms
                   if form is not None and form.version == network.version)


def _name(host: str) -> str:
    return host.strip().lower().rstrip(".")
