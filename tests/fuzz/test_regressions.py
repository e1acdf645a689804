"""Inputs the fuzz targets found that broke the product, each pinned as a plain test."""

from __future__ import annotations

from integrations.hl7.mllp import Framer


def test_frame_of_exactly_max_bytes_split_between_fs_and_cr_is_not_oversize():
    """Found by mllp_framer_any_bytes: the <FS> of an end block split across reads was counted
    against max_bytes, so a message of exactly the limit was refused as oversize."""
    framer = Framer(5)
    assert framer.feed(b"\x0bHELLO\x1c") == []
    [frame] = framer.feed(b"\x0d")
    assert (frame.problem, frame.payload) == ("", b"HELLO")
    empty = Framer(0)
    assert empty.feed(b"\x0b\x1c") == [] and [f.problem for f in empty.feed(b"\x0d")] == [""]


def test_oversize_frame_whose_kept_header_ends_in_fs_does_not_end_at_a_later_cr():
    """The kept header of an oversize frame ending in <FS> made the next read's leading <CR> end
    the frame early; the rest of the frame was then dropped as noise."""
    framer = Framer(2)
    frames = []
    for chunk in (b"\x0bab\x1c", b"zz", b"\rrest", b"\x1c\r"):
        frames += framer.feed(chunk)
    assert [f.problem for f in frames] == ["oversize"] and framer.dropped == 0
    assert framer.pending() is None
