"""Talking to the model API: the request the client sends, and the server-sent events read
back, the same text however the reads cut the stream."""

from __future__ import annotations

import pytest
from openai._utils import maybe_transform
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming

from channels.coach_model import DONE, CompletionStream, ModelStreamError, chunk_of

EVENTS = (b'data: {"choices":[{"delta":{"content":"Hi"}}]}\r\n\r\n: keep-alive\n\n'
          b'data: {"choices":[{"delta":{"content":" there"},"finish_reason":"stop"}],'
          b'"usage":{"total_tokens":3}}\r\r'
          b'data: [DONE]\n\ndata: {"choices":[{"delta":{"content":"after the end"}}]}\n')


def _read_in_pieces(data: bytes, size: int) -> tuple[list[str], CompletionStream]:
    stream = CompletionStream()
    pieces: list[str] = []
    for start in range(0, len(data), size):
        pieces += stream.feed(data[start:start + size])
    return pieces + stream.end(), stream


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_text_is_the_same_however_the_reads_cut_the_stream(size: int) -> None:
    pieces, stream = _read_in_pieces(EVENTS, size)
    assert pieces == ["Hi", " there"]
    assert stream.ended and stream.finish_reason == "stop"
    assert stream.usage == {"total_tokens": 3}


def test_a_last_line_without_its_end_is_still_read() -> None:
    pieces, stream = _read_in_pieces(b'data: {"choices":[{"delta":{"content":"Hi"}}]}', 5)
    assert pieces == ["Hi"] and not stream.ended


def test_chunks_come_from_data_lines_only() -> None:
    assert chunk_of(b'data: {"choices":[]}') == {"choices": []}
    assert chunk_of(b"data: [DONE]") is DONE
    assert chunk_of(b": keep-alive") is None and chunk_of(b"event: ping") is None
    with pytest.raises(ModelStreamError, match="malformed"):
        chunk_of(b"data: {not json")
    with pytest.raises(ModelStreamError, match="mid-answer: overloaded"):
        chunk_of(b'data: {"error": {"message": "overloaded"}}')


def test_text_before_a_failure_in_the_same_read_still_counts() -> None:
    stream = CompletionStream()
    pieces = stream.feed(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
                         b'data: {"error": {"message": "overloaded"}}\n\n')
    assert pieces == ["Hi"] and stream.ended
    assert stream.failure is not None and "overloaded" in str(stream.failure)


def test_the_conversation_sent_past_the_clients_transform_is_what_the_transform_sends() -> None:
    """`read_answer` puts the messages in `extra_body`; the client's own transform of them
    (a private function, checked here so a client that starts changing messages is noticed)
    must leave them as they are."""
    messages = [  # the shape `coach_prompt.PromptBuilder.build` gives
        {"role": "system", "content": "You are a coach."},
        {"role": "system", "content": "Athlete context: no workout recorded yet."},
        {"role": "user", "content": "How was it?"}, {"role": "assistant", "content": "Good."},
        {"role": "user", "content": "And now?"}]
    body = {"model": "m", "messages": messages, "stream": True}
    assert maybe_transform(body, CompletionCreateParamsStreaming)["messages"] == messages
