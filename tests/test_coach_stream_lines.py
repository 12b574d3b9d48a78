"""Reading the model's server-sent events: lines from reads cut anywhere, chunks from lines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from channels.coach_answer import _DONE, ModelStreamError, _chunk_of, _lines

EVENTS = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\r\n\r\n: keep-alive\n\ndata: [DONE]\r\r'


async def _reads(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def _data_lines(data: bytes, size: int) -> list[bytes]:
    return [line async for line in _lines(_reads(data, size)) if line]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
async def test_lines_are_the_same_however_the_reads_cut_them(size: int) -> None:
    assert await _data_lines(EVENTS, size) == [
        b'data: {"choices":[{"delta":{"content":"Hi"}}]}', b": keep-alive", b"data: [DONE]"]


async def test_a_last_line_without_its_end_is_still_read() -> None:
    assert await _data_lines(b"data: [DONE]", 5) == [b"data: [DONE]"]


def test_chunks_come_from_data_lines_only() -> None:
    assert _chunk_of(b'data: {"choices":[]}') == {"choices": []}
    assert _chunk_of(b"data: [DONE]") is _DONE
    assert _chunk_of(b": keep-alive") is None and _chunk_of(b"event: ping") is None
    with pytest.raises(ModelStreamError, match="malformed"):
        _chunk_of(b"data: {not json")
    with pytest.raises(ModelStreamError, match="mid-answer: overloaded"):
        _chunk_of(b'data: {"error": {"message": "overloaded"}}')
