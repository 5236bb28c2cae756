"""Drives a running `bitnet serve` with the official `openai` Python package.

Checks what an existing OpenAI client relies on: the model list, a chat completion and a
streamed one (same greedy text, same finish reason and usage), a text completion, and that
errors arrive as the client's typed exceptions. Prints one JSON line on success; any failed
check raises (non-zero exit).

Run by the `openai_python` test of bitnet-server, which starts the server and passes the
expected greedy answer; the client comes from `scripts/openai-venv.sh`.
"""

import argparse
import json

import openai
from openai import OpenAI


def expect_error(kind, status, call):
    try:
        call()
    except kind as e:
        assert e.status_code == status, (e.status_code, status)
        return e
    raise AssertionError(f"expected {kind.__name__}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--expect", required=True, help="the greedy answer's text")
    a = p.parse_args()

    # No retries: a failure must show as one.
    client = OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=120)

    ids = [m.id for m in client.models.list().data]
    assert ids == [a.model], ids

    messages = [{"role": "user", "content": a.question}]
    whole = client.chat.completions.create(
        model=a.model, messages=messages, max_tokens=a.max_tokens, temperature=0
    )
    choice = whole.choices[0]
    assert whole.object == "chat.completion", whole.object
    assert choice.message.role == "assistant"
    assert choice.message.content == a.expect, (choice.message.content, a.expect)
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    usage = whole.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == a.max_tokens, usage

    stream = client.chat.completions.create(
        model=a.model,
        messages=messages,
        max_tokens=a.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, streamed_usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk", chunk.object
        if chunk.usage is not None:
            streamed_usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason is not None:
                finish = c.finish_reason
    assert "".join(parts) == a.expect, ("".join(parts), a.expect)
    assert finish == choice.finish_reason, (finish, choice.finish_reason)
    assert streamed_usage is not None
    assert streamed_usage.completion_tokens == usage.completion_tokens
    assert streamed_usage.prompt_tokens == usage.prompt_tokens

    text = client.completions.create(model=a.model, prompt="Hello", max_tokens=3, temperature=0)
    assert text.object == "text_completion", text.object
    assert text.choices[0].finish_reason in ("stop", "length")
    assert text.usage.completion_tokens <= 3

    expect_error(
        openai.NotFoundError,
        404,
        lambda: client.chat.completions.create(model="no-such-model", messages=messages),
    )
    e = expect_error(
        openai.BadRequestError,
        400,
        lambda: client.chat.completions.create(
            model=a.model, messages=messages, temperature=-1
        ),
    )
    assert e.param == "temperature", e.param
    wrong_key = OpenAI(base_url=a.base_url, api_key="not-the-key", max_retries=0)
    e = expect_error(openai.AuthenticationError, 401, lambda: wrong_key.models.list())
    assert e.code == "invalid_api_key", e.code

    print(
        json.dumps(
            {
                "ok": True,
                "openai": openai.__version__,
                "content": choice.message.content,
                "finish_reason": choice.finish_reason,
                "stream_chunks": chunks,
            }
        )
    )


if __name__ == "__main__":
    main()
