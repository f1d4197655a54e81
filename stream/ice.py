"""ICE candidate policy: which local addresses we offer, and which remote candidates we accept.

aioice gathers host candidates from every interface except loopback, and resolves a remote
``.local`` (mDNS) name by multicasting on the LAN. A server that must stay on known addresses
(tests on loopback; a host with a public and a private NIC) restricts both ends here:

- remote candidates are filtered as SDP text (the offer, or a trickled fragment) before aiortc
  parses them, so aioice never sees a dropped one and never resolves a name;
- local gathering goes through ``Connection.get_component_candidates(component, addresses)``,
  the one place where aioice turns addresses into sockets. ``restrict_gathering`` overrides it
  on each connection of one peer connection, so nothing process-wide is patched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import ifaddr
from aioice import Candidate
from aiortc import RTCPeerConnection

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CANDIDATE_PREFIX = "a=candidate:"


def parse_ice_hosts(text: str) -> tuple[str, ...]:
    """``ADDR[,ADDR]`` (an address or a CIDR network each) -> normalised entries; ValueError if bad."""
    entries = tuple(part.strip() for part in text.split(",") if part.strip())
    for entry in entries:
        ipaddress.ip_network(entry, strict=False)  # raises ValueError naming the entry
    return entries


@dataclass(frozen=True)
class IcePolicy:
    """``hosts`` are addresses or CIDR networks; empty means any IP address. Names are never
    accepted: resolving one (mDNS or DNS) would send traffic the policy does not allow."""

    hosts: tuple[str, ...] = ()
    networks: tuple[IpNetwork, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        networks = tuple(ipaddress.ip_network(host, strict=False) for host in self.hosts)
        object.__setattr__(self, "networks", networks)

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return not self.networks or any(address in network for network in self.networks)

    def local_addresses(self) -> list[str] | None:
        """Interface addresses inside the policy, loopback included; None: aioice's default."""
        if not self.networks:
            return None
        addresses = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    address = ip.ip
                elif ip.ip[2] == 0:  # IPv6 with a scope id (link-local) cannot be offered unscoped
                    address = ip.ip[0]
                else:
                    continue
                if self.allows(address) and address not in addresses:
                    addresses.append(address)
        return addresses


def candidate_host(attribute: str) -> str | None:
    """The connection address of ``[a=]candidate:foundation component transport priority ADDR port
    typ ...``, or None when the line is too short to be a candidate."""
    fields = attribute.split()
    return fields[4] if len(fields) >= 8 else None


def filter_sdp_candidates(sdp: str, policy: IcePolicy) -> tuple[str, list[str]]:
    """Drop ``a=candidate`` lines the policy refuses; returns the SDP and the dropped hosts."""
    kept, dropped = [], []
    for line in sdp.splitlines():
        if line.startswith(CANDIDATE_PREFIX):
            host = candidate_host(line)
            if host is None or not policy.allows(host):
                dropped.append(host or line)
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", dropped


@dataclass(frozen=True)
class SdpFragment:
    """A trickle-ICE sdpfrag (RFC 8840): credentials and candidates, each with its m-section mid."""

    ufrag: str | None
    pwd: str | None
    candidates: tuple[tuple[str | None, str], ...]  # (mid, "candidate:..." without "a=")
    end_of_candidates: bool


def parse_sdpfrag(text: str) -> SdpFragment:
    ufrag = pwd = mid = None
    candidates: list[tuple[str | None, str]] = []
    end = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :]
        elif line.startswith(CANDIDATE_PREFIX):
            candidates.append((mid, line[len("a=") :]))
        elif line == "a=end-of-candidates":
            end = True
    return SdpFragment(ufrag, pwd, tuple(candidates), end)


def filter_fragment(fragment: SdpFragment, policy: IcePolicy) -> tuple[SdpFragment, list[str]]:
    kept, dropped = [], []
    for mid, attribute in fragment.candidates:
        host = candidate_host(attribute)
        if host is not None and policy.allows(host):
            kept.append((mid, attribute))
        else:
            dropped.append(host or attribute)
    return SdpFragment(fragment.ufrag, fragment.pwd, tuple(kept), fragment.end_of_candidates), dropped


GatherFn = Callable[..., Awaitable[list[Candidate]]]


def restrict_gathering(pc: RTCPeerConnection, policy: IcePolicy) -> None:
    """Make every ICE connection of ``pc`` gather host candidates only on the policy's addresses.

    Call after the transceivers exist and before ``setLocalDescription`` (which gathers). aiortc
    exposes no public handle on the aioice ``Connection``; ``RTCIceGatherer._connection`` is the
    one private name used, checked against aiortc 1.16 / aioice 0.13.
    """
    addresses = policy.local_addresses()
    if addresses is None:
        return
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport.transport)
    for transport in transports:
        connection = transport.iceGatherer._connection
        connection.get_component_candidates = _with_addresses(connection.get_component_candidates, addresses)


def _with_addresses(gather: GatherFn, allowed: list[str]) -> GatherFn:
    async def get_component_candidates(
        component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        del addresses  # aioice's choice (every interface but loopback) is what the policy replaces
        return await gather(component=component, addresses=list(allowed), timeout=timeout)

    return get_component_candidates
