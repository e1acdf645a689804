"""Fixtures shared by the fuzz targets and their regression tests."""

from __future__ import annotations

import asyncio

import pytest

from integrations.hl7.handlers import Committer, MessageHandler


@pytest.fixture
def handler(blob_dir):
    """The MLLP listener's frame handler with its real group committer, on an event loop of its own."""
    loop = asyncio.new_event_loop()
    committer = Committer()

    async def start() -> None:
        committer.start()

    loop.run_until_complete(start())
    yield loop, MessageHandler(committer)
    loop.run_until_complete(committer.stop())
    loop.close()
