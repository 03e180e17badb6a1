"""The local edge's configuration and slot arithmetic (the live switch runs in
tests/integration/test_zero_downtime.py against a real HAProxy)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from modelship import local_edge
from modelship.local_edge import Edge

EDGE = Edge(env="local", port=18080, slot_ports=(18091, 18092))


def test_a_new_container_takes_the_slot_the_active_one_does_not_use():
    assert EDGE.free_port(None) == 18091
    assert EDGE.free_port(18091) == 18092
    assert EDGE.free_port(18092) == 18091
    assert (EDGE.slot_of(18091), EDGE.slot_of(18092)) == ("blue", "green")


def test_the_configuration_listens_on_loopback_and_routes_only_to_the_active_slot():
    text = local_edge.config_text(EDGE, active_port=18092)
    assert "bind 127.0.0.1:18080" in text
    assert "server blue 127.0.0.1:18091 disabled" in text
    assert "server green 127.0.0.1:18092\n" in text
    assert "retry-on conn-failure empty-response" in text
    nothing = local_edge.config_text(EDGE, active_port=None)
    assert nothing.count(" disabled") == 2


def test_the_edge_lives_per_machine_and_port_not_per_checkout():
    assert EDGE.run_dir.name == "modelship-edge-18080"
    assert EDGE.socket_path.parent == EDGE.run_dir
    # Short enough for a Unix socket wherever the checkout is.
    assert len(str(EDGE.socket_path)) < 100


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_configuration(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_edge.config_text(EDGE, active_port=18091))
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_the_slots_follow_the_edge_port_unless_set():
    from types import SimpleNamespace

    def settings(port, slots=None):
        return SimpleNamespace(env="local", deployment=SimpleNamespace(port=port),
                               local_services=SimpleNamespace(slot_ports=slots))

    assert Edge.of(settings(18080)).slot_ports == (18091, 18092)
    assert Edge.of(settings(18190)).slot_ports == (18201, 18202)
    assert Edge.of(settings(18080, (20001, 20002))).slot_ports == (20001, 20002)
