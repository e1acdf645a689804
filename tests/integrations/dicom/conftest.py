"""fhirai's DICOM SCP on a real socket, for the tests that talk to it."""

from __future__ import annotations

import pytest

from integrations.dicom.scp import server_start
from tests.support.product import free_port


@pytest.fixture
def scp(settings):
    """The SCP serving on a free loopback port (yields the port), stopped afterwards."""
    port = free_port()
    server = server_start(("127.0.0.1", port))
    yield port
    server.shutdown()
