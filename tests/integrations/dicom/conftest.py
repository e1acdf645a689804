"""fhirai's DICOM SCP on a real socket, for the tests that talk to it."""

from __future__ import annotations

import pytest

from integrations.dicom.scp import server_start
from tests.support.product import free_port


@pytest.fixture(params=["fhirai"])
def scp(request, settings):
    """The SCP serving on a free loopback port (yields the port), stopped afterwards; on the
    default engine, or on those a test asks for with
    @pytest.mark.parametrize("scp", ["fhirai", "pynetdicom"], indirect=True)."""
    settings.FHIRAI_DICOM_ENGINE = request.param
    port = free_port()
    server = server_start(("127.0.0.1", port))
    yield port
    server.shutdown()
