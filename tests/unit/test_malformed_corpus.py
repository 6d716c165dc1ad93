"""The load test's malformed corpus: every message gets exactly the reason code it claims, and
together they cover every reason class an input message can be dead-lettered with."""

from __future__ import annotations

import pytest

from loadtest.scenarios import _MALFORMED, REASON_CLASSES, malformed
from loadtest.traffic import GIFT, ORDER, VIEWER
from schemas import Invalid, decode_gift, decode_order, decode_viewer

NOW = 1_700_000_000_000
DECODERS = {VIEWER: decode_viewer, ORDER: decode_order, GIFT: decode_gift}


@pytest.mark.parametrize("i", range(len(_MALFORMED)))
def test_each_malformed_message_gets_the_reason_it_claims(i: int) -> None:
    source, raw, reason = malformed(i, "r7", NOW)
    out = DECODERS[source](raw, NOW)
    assert type(out) is Invalid and out.reason == reason, out


def test_the_corpus_covers_every_reason_class() -> None:
    classes = {malformed(i, "r7", NOW)[2].partition(":")[0] for i in range(len(_MALFORMED))}
    assert classes == REASON_CLASSES
