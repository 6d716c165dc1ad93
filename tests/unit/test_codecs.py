"""The worker refuses to start without the codecs producers compress with (the integration test
``test_compressed_batches_from_librdkafka_aggregate_like_plain_ones`` feeds it such batches)."""

from __future__ import annotations

import pytest
from aiokafka import codec

from streams._topology import check_codecs
from streams.exceptions import ConfigError


def test_this_installation_decodes_every_producer_codec() -> None:
    assert codec.has_gzip() and codec.has_snappy() and codec.has_lz4() and codec.has_zstd()
    check_codecs()


@pytest.mark.parametrize("name", ["snappy", "lz4", "zstd"])
def test_a_missing_codec_stops_the_start_naming_the_fix(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(codec, f"has_{name}", lambda: False)
    with pytest.raises(ConfigError, match=rf"cannot decompress {name} batches.*install cramjam"):
        check_codecs()
