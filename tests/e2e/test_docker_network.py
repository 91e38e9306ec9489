"""The host's address on a Docker network, found on any Docker: the remote-worker and Flower tests
publish the stack there. Some daemons list a network's gateway in its IPAM config, others (a default
bridge set up by the daemon, a network made with `--subnet` alone) only its subnet.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import uuid

import pytest

from harness import docker_ok, require
from harness.stack import host_address

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture
def network_without_gateway():
    """A bridge network made with --subnet alone (its IPAM config lists no gateway); its subnet."""
    require(docker_ok("info"), "no Docker engine (run ../shared/ci/docker-sandbox.sh)")
    name = f"tagifai-test-{uuid.uuid4().hex[:8]}"
    for third in range(200, 250):  # the first subnet no other network of this machine holds
        subnet = f"172.31.{third}.0/24"
        made = subprocess.run(["docker", "network", "create", "--subnet", subnet, name], capture_output=True, text=True)
        if made.returncode == 0:
            break
    else:
        pytest.fail(f"no free /24 in 172.31.200-249 for a test network: {made.stderr.strip()}")
    try:
        yield name, ipaddress.ip_network(subnet)
    finally:
        subprocess.run(["docker", "network", "rm", name], capture_output=True)


def test_a_network_that_lists_no_gateway_gives_its_bridge_interfaces_address(network_without_gateway):
    name, subnet = network_without_gateway
    listed = subprocess.run(
        ["docker", "network", "inspect", name, "--format", "{{json .IPAM.Config}}"], capture_output=True, text=True
    )
    assert "Gateway" not in listed.stdout  # the case this test is about
    address = host_address(name)
    assert ipaddress.ip_address(address) in subnet
    # The host really holds it: something bound there is reachable.
    with socket.create_server((address, 0)) as server:
        assert server.getsockname()[0] == address


def test_the_default_bridge_gives_an_address_this_host_holds():
    require(docker_ok("info"), "no Docker engine (run ../shared/ci/docker-sandbox.sh)")
    address = host_address("bridge")
    assert ipaddress.ip_address(address).version == 4
    with socket.create_server((address, 0)) as server:
        assert server.getsockname()[0] == address


def test_an_unknown_network_is_named_in_the_failure():
    require(docker_ok("info"), "no Docker engine (run ../shared/ci/docker-sandbox.sh)")
    with pytest.raises(AssertionError, match="docker network inspect tagifai-no-such-network failed"):
        host_address("tagifai-no-such-network")
