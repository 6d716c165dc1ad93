"""Checks before a worker starts: the codecs producers compress with (the integration test
``test_compressed_batches_from_librdkafka_aggregate_like_plain_ones`` feeds it such batches), and
the credential check's time budget (its outcomes against a real broker: tests/integration)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import codec

from streams._topology import check_codecs, check_credentials
from streams.exceptions import ConfigError
from streams.settings import settings_from_env


def test_this_installation_decodes_every_producer_codec() -> None:
    assert codec.has_gzip() and codec.has_snappy() and codec.has_lz4() and codec.has_zstd()
    check_codecs()


@pytest.mark.parametrize("name", ["snappy", "lz4", "zstd"])
def test_a_missing_codec_stops_the_start_naming_the_fix(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(codec, f"has_{name}", lambda: False)
    with pytest.raises(ConfigError, match=rf"cannot decompress {name} batches.*install cramjam"):
        check_codecs()


async def test_a_broker_that_never_answers_the_handshake_does_not_hold_the_start_past_its_budget() -> None:
    """A server that takes the TCP connection and then says nothing (a hung broker): the check gives
    up within LIVEPULSE_BROKER_WAIT_MS (not 30 s per try) and leaves the outage to the admin client."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = settings_from_env(
        {
            "LIVEPULSE_BROKERS": f"127.0.0.1:{port}",
            "LIVEPULSE_BROKER_WAIT_MS": "1500",
            "LIVEPULSE_SECURITY_PROTOCOL": "SASL_SSL",
            "LIVEPULSE_SASL_MECHANISM": "SCRAM-SHA-512",
            "LIVEPULSE_SASL_USERNAME": "u",
            "LIVEPULSE_SASL_PASSWORD": "p",
        }
    )
    t0 = time.monotonic()
    try:
        await check_credentials(settings)
    finally:
        for writer in held:
            writer.close()
        server.close()
    assert 1.4 <= time.monotonic() - t0 < 5
