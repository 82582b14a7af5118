"""The official openai SDK against Tollgate: a completion and a stream, checked."""

import sys

from openai import OpenAI

client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY come from the environment

completion = client.chat.completions.create(
    model="assistant",
    messages=[{"role": "user", "content": "Say hello"}],
)
text = completion.choices[0].message.content
assert completion.model == "gpt-4o-mini", completion.model
assert text and len(text.split()) > 3, text
assert completion.usage.total_tokens > 0
print("completion ok:", text)

pieces = []
usage = None
with client.chat.completions.create(
    model="assistant",
    messages=[{"role": "user", "content": "Stream please"}],
    stream=True,
    stream_options={"include_usage": True},
) as stream:
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
assert len(pieces) > 3, pieces
assert usage is not None and usage.completion_tokens > 0
print("stream ok:", "".join(pieces))

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected a NotFoundError")
except Exception as e:  # the SDK maps our 404 to its NotFoundError
    assert type(e).__name__ == "NotFoundError", repr(e)
print("errors ok")
