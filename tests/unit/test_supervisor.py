"""service.supervisor: the pure parts (instance ids, backoff, port reservation)."""

from __future__ import annotations

import socket

import pytest

from service.config import INSTANCE_ID_MAX, instance_id_problem
from service.supervisor import BACKOFF_MAX_S, reserve_port, restart_delay, worker_instance_id


def test_each_worker_and_each_restart_has_its_own_instance_id() -> None:
    ids = {
        worker_instance_id("pod-7", index, restarts) for index in (1, 2) for restarts in (0, 1, 2)
    }
    assert len(ids) == 6
    assert worker_instance_id("pod-7", 1, 0) == "pod-7-w1"
    assert worker_instance_id("pod-7", 2, 3) == "pod-7-w2-r3"


def test_a_long_base_is_cut_so_the_id_stays_valid() -> None:
    ident = worker_instance_id("h" * INSTANCE_ID_MAX, 12, 345)
    assert len(ident) == INSTANCE_ID_MAX
    assert ident.endswith("-w12-r345")
    assert instance_id_problem(ident) is None


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (1000, 30.0)]
)
def test_restart_backoff_doubles_up_to_a_ceiling(failures: int, delay: float) -> None:
    assert restart_delay(failures) == min(delay, BACKOFF_MAX_S)


def test_port_0_is_reserved_and_shareable() -> None:
    assert reserve_port("127.0.0.1", 8080) is None
    reserved = reserve_port("127.0.0.1", 0)
    assert reserved is not None
    with reserved:
        port = reserved.getsockname()[1]
        assert port != 0
        # A worker can listen on it beside the reservation (SO_REUSEPORT, same user).
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                accepted, _ = worker.accept()
                accepted.close()
