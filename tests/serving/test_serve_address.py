"""serve.py checks its listen address before loading any model (bad port, port in use)."""

from __future__ import annotations

import socket

import pytest

from elis.serving.gateway import check_listen_address


@pytest.mark.parametrize("port", ["notaport", 0, 70000, -1, "8000.5"])
def test_bad_port_names_the_key(port):
    with pytest.raises(ValueError, match=r"port=.* is not an integer in 1\.\.65535"):
        check_listen_address("127.0.0.1", port)


def test_port_in_use_is_refused_and_a_free_one_accepted():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=rf"cannot listen on host=127\.0\.0\.1 port={port}: .*port=\.\.\."):
            check_listen_address("127.0.0.1", port)
    # Closed again: the same port (given as a string, as from the command line) is accepted.
    assert check_listen_address("127.0.0.1", str(port)) == port
