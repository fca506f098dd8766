"""The image-download address policy (ml_backend/ls/netpolicy.py): which addresses are public,
what DOWNLOAD_ALLOW opens, and what is refused whatever it says. IP literals and localhost only,
so nothing here needs DNS."""

from ipaddress import ip_address

import pytest

from ml_backend.ls.netpolicy import AddressRefused, DownloadPolicy, classify, embedded_ipv4


@pytest.mark.parametrize("address, kind", [
    ("8.8.8.8", "public"),
    ("1.1.1.1", "public"),
    ("2606:4700:4700::1111", "public"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("fec0::1", "site-local"),
    ("240.0.0.1", "private"),  # 240/4, which Python counts as private too
    ("255.255.255.255", "private"),
    ("192.0.2.1", "private"),  # documentation (TEST-NET-1)
    ("198.18.0.1", "private"),  # benchmarking
    ("192.0.0.8", "special-purpose"),  # IETF protocol assignments
    ("64:ff9b:1::a00:1", "reserved"),  # local-use NAT64
    ("2001:db8::1", "private"),  # documentation
    ("::7f00:1", "reserved"),  # IPv4-compatible ::127.0.0.1 (deprecated form)
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("192.0.0.192", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    # IPv6 forms of IPv4 addresses are judged by the IPv4 address they carry.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:8.8.8.8", "public"),
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
    ("2002:808:808::1", "public"),  # 6to4 of 8.8.8.8
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", "public"),
])
def test_classify_names_the_kind_of_every_non_public_address(address, kind):
    assert classify(ip_address(address)) == kind


def test_embedded_ipv4_reads_mapped_6to4_and_nat64_forms():
    assert embedded_ipv4(ip_address("::ffff:192.168.0.1")) == ip_address("192.168.0.1")
    assert embedded_ipv4(ip_address("2002:c0a8:1::")) == ip_address("192.168.0.1")
    assert embedded_ipv4(ip_address("64:ff9b::c0a8:1")) == ip_address("192.168.0.1")
    assert embedded_ipv4(ip_address("2606:4700::1")) is None and embedded_ipv4(ip_address("10.0.0.1")) is None


@pytest.mark.parametrize("host", [
    "127.0.0.1", "::1", "0.0.0.0", "10.0.0.7", "192.168.0.1", "100.64.1.1", "fe80::1", "::ffff:127.0.0.1",
    "2130706433", "0x7f.1", "017700000001", "127.1", "0177.0.0.1",  # decimal, hex and octal spellings of loopback
    "localhost", "LOCALHOST.",
])
def test_non_public_hosts_are_refused_by_default_naming_the_address_and_setting(host):
    with pytest.raises(AddressRefused, match=r"not a public address \((loopback|unspecified|private|shared|"
                                             r"link-local)\).*DOWNLOAD_ALLOW"):
        DownloadPolicy().addresses(host, 80)


def test_a_spelled_out_address_is_named_with_what_it_resolves_to():
    with pytest.raises(AddressRefused, match=r"^2130706433 resolves to 127\.0\.0\.1, which is not a public"):
        DownloadPolicy().addresses("2130706433", 80)


def test_public_addresses_pass_and_are_returned_to_connect_to():
    assert DownloadPolicy().addresses("8.8.8.8", 443) == [ip_address("8.8.8.8")]
    assert DownloadPolicy().addresses("2606:4700:4700::1111", 443) == [ip_address("2606:4700:4700::1111")]


@pytest.mark.parametrize("allow, host", [
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", "2130706433"),  # the address it resolves to counts, not its spelling
    ("127.0.0.0/8", "127.0.0.2"),
    ("10.0.0.0/8, 192.168.0.0/16", "192.168.3.4"),
    ("localhost", "localhost"),
    ("LocalHost.", "localhost"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("127.0.0.1", "::ffff:127.0.0.1"),  # an IPv4 network holds the mapped form too
    ("fc00::/7", "fd00::5"),
])
def test_download_allow_opens_named_hosts_addresses_and_networks(allow, host):
    assert DownloadPolicy.parse(allow).addresses(host, 80)


@pytest.mark.parametrize("allow, host", [
    ("127.0.0.1", "127.0.0.2"),
    ("10.0.0.0/8", "192.168.0.1"),
    ("localhost", "127.0.0.1"),  # a name opens that name, not its address under another name
    ("127.0.0.1", "::1"),
])
def test_download_allow_opens_nothing_else(allow, host):
    with pytest.raises(AddressRefused):
        DownloadPolicy.parse(allow).addresses(host, 80)


@pytest.mark.parametrize("host", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254",
                                  "metadata.google.internal", "METADATA.GOOGLE.INTERNAL.", "metadata"])
def test_cloud_metadata_services_are_refused_even_when_allowed(host):
    policy = DownloadPolicy.parse("169.254.0.0/16, fd00::/8, ::ffff:0:0/96, metadata.google.internal, metadata")
    with pytest.raises(AddressRefused, match="cloud metadata service"):
        policy.addresses(host, 80)


def test_download_allow_parses_entries_and_rejects_what_is_neither_host_nor_network():
    policy = DownloadPolicy.parse(" minio , 10.0.0.0/8,, 192.168.1.7 ,fd00::/8 ")
    assert policy.hosts == {"minio"}
    assert [str(n) for n in policy.networks] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    assert DownloadPolicy.parse("") == DownloadPolicy()
    for bad in ("10.0.0.0/33", "http://minio", "minio:9000", "two words"):
        with pytest.raises(ValueError, match="DOWNLOAD_ALLOW entry"):
            DownloadPolicy.parse(bad)
