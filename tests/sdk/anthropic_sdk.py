"""The official anthropic SDK against Tollgate's /v1/messages, served by an OpenAI-style target."""

import os

from anthropic import Anthropic

client = Anthropic(base_url=os.environ["TOLLGATE_URL"], api_key=os.environ["TOLLGATE_KEY"])

message = client.messages.create(
    model="assistant",
    max_tokens=100,
    system="Be brief.",
    messages=[{"role": "user", "content": "Say hello"}],
)
text = "".join(block.text for block in message.content if block.type == "text")
assert len(text.split()) > 3, text
assert message.stop_reason == "end_turn", message.stop_reason
assert message.usage.output_tokens > 0
print("message ok:", text)

pieces = []
with client.messages.stream(
    model="assistant",
    max_tokens=100,
    messages=[{"role": "user", "content": "Stream please"}],
) as stream:
    for delta in stream.text_stream:
        pieces.append(delta)
    final = stream.get_final_message()
assert len(pieces) > 3, pieces
assert final.usage.output_tokens > 0, final.usage
assert final.stop_reason == "end_turn", final.stop_reason
print("stream ok:", "".join(pieces))

try:
    client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected a NotFoundError")
except Exception as e:  # the SDK maps our 404 to its NotFoundError
    assert type(e).__name__ == "NotFoundError", repr(e)
print("errors ok")
