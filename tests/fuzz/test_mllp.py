"""The MLLP framer (integrations.hl7.mllp.Framer) under arbitrary streams and read boundaries."""

from __future__ import annotations

from hypothesis import strategies as st

from integrations.hl7.mllp import END, START, Framer
from tests.fuzz.budget import fuzz_target

# Payload bytes may hold a lone FS or CR, never VT (a new frame) nor FS CR (the end block).
payload_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c\r", b"\x1c"))
noise = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b""))


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def feed_all(framer: Framer, chunks: list[bytes]) -> list[tuple[str, bytes]]:
    return [(f.problem, f.payload) for chunk in chunks for f in framer.feed(chunk)]


@fuzz_target(
    "mllp_framer_any_bytes",
    ci=800,
    stream=st.binary(max_size=2000)
    | st.lists(st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\x1c\r", b"MSH|", b"x" * 40]), max_size=60).map(
        b"".join
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    max_bytes=st.integers(min_value=0, max_value=200),
)
def test_any_stream_in_any_chunking_gives_the_same_frames(stream, cuts, max_bytes):
    """Never raises; the frames (problem and payload, or kept header of an oversize frame) do not
    depend on where the reads split the stream."""
    whole = feed_all(Framer(max_bytes), [stream])
    chunked_framer = Framer(max_bytes)
    chunked = feed_all(chunked_framer, split(stream, cuts))
    assert [p for p, _ in chunked] == [p for p, _ in whole]
    for (problem, a), (_, b) in zip(chunked, whole, strict=True):
        if problem == "oversize":  # the kept header: a prefix of the frame, at most 4096 bytes
            assert len(a) <= 4096 and (b.startswith(a) or a.startswith(b))
        else:
            assert a == b and len(a) <= max_bytes or problem == "truncated"
    whole_framer = Framer(max_bytes)
    whole_framer.feed(stream)
    left, whole_left = chunked_framer.pending(), whole_framer.pending()
    if whole_framer.oversize and whole_left is not None:
        assert left is not None and (whole_left.startswith(left) or left.startswith(whole_left))
    else:
        assert left == whole_left


@fuzz_target(
    "mllp_framer_well_formed",
    ci=800,
    lead=noise,
    frames=st.lists(st.tuples(payload_bytes, noise), max_size=8),
    cuts=st.lists(st.integers(min_value=0), max_size=40),
    max_bytes=st.integers(min_value=1, max_value=400),
)
def test_well_formed_frames_reassemble_exactly_and_oversize_is_marked(lead, frames, cuts, max_bytes):
    """Each frame comes out once, in order: its payload when within max_bytes, else marked
    oversize with (a prefix of) its start kept for the NAK; noise between frames is dropped."""
    stream = lead + b"".join(START + p + END + gap for p, gap in frames)
    framer = Framer(max_bytes)
    got = feed_all(framer, split(stream, cuts))
    assert len(got) == len(frames)
    for (problem, payload), (sent, _) in zip(got, frames, strict=True):
        if len(sent) > max_bytes:
            assert problem == "oversize" and sent.startswith(payload) and len(payload) <= 4096
        else:
            assert (problem, payload) == ("", sent)
    assert framer.pending() is None
    assert framer.dropped == len(lead) + sum(len(gap) for _, gap in frames)
