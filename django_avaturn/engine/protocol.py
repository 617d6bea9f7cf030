"""The wire formats the site engine speaks: Avaturn's external-engine socket and the
client events it sends to OpenAI Realtime.

Audio is PCM16 little-endian mono at 24 kHz in both directions: Avaturn is asked for
24 kHz microphone audio and OpenAI's only PCM rate is 24 kHz, so nothing is resampled.

Avaturn's messages (engine → Avaturn, JSON text frames):
``avatar.speech.segment.create`` / ``.close`` (``segment_uid``) around every burst of
audio, ``avatar.speech.interrupt`` to discard what it has buffered, and
``sdk.message.send`` (``data``) for the browser. Avaturn → engine:
``avatar.speech.segment.created`` / ``.closed`` (``segment_id``, ``segment_uid``),
``avatar.speech.segment.playback.started`` / ``.ended`` (``timestamp``, seconds),
``avatar.speech.segment.playback.interrupted`` (``played_duration``, seconds),
``sdk.message.receive`` and advisory ``error`` (``subtype``, ``reason``).

The builders return ready strings: the audio path sends them without another
``json.dumps`` per frame.
"""

from __future__ import annotations

import binascii
import json
from typing import Any, Final

# PCM16 mono at 24 kHz: 2 bytes a sample, 24 samples a millisecond.
SAMPLE_RATE: Final = 24000
BYTES_PER_MS: Final = 48

# The ``type`` of the engine's data inside ``sdk.message.send``: namespaced so it can
# never collide with the web SDK's own event names; the widget turns it into an
# ``avaturn:message`` DOM event whose ``detail`` is the inner ``data``.
BROWSER_MESSAGE_TYPE: Final = "django_avaturn.message"

# Avaturn → engine message types.
SEGMENT_CREATED: Final = "avatar.speech.segment.created"
SEGMENT_CLOSED: Final = "avatar.speech.segment.closed"
PLAYBACK_STARTED: Final = "avatar.speech.segment.playback.started"
PLAYBACK_ENDED: Final = "avatar.speech.segment.playback.ended"
PLAYBACK_INTERRUPTED: Final = "avatar.speech.segment.playback.interrupted"
SDK_MESSAGE_RECEIVE: Final = "sdk.message.receive"
AVATURN_ERROR: Final = "error"

INTERRUPT: Final = '{"type":"avatar.speech.interrupt"}'


def segment_create(segment_uid: str) -> str:
    """Open a speech segment: sent before its first audio byte."""
    return json.dumps({"type": "avatar.speech.segment.create", "segment_uid": segment_uid})


def segment_close(segment_uid: str) -> str:
    """Close a speech segment: sent after its last audio byte."""
    return json.dumps({"type": "avatar.speech.segment.close", "segment_uid": segment_uid})


def browser_message(data: dict[str, Any]) -> str:
    """``sdk.message.send`` carrying ``data`` to the page, under our namespaced type.

    Written as ``send_to_browser`` measured it (compact, UTF-8 unescaped), so
    the frame is the data's measured size plus this envelope.
    """
    return json.dumps(
        {"type": "sdk.message.send", "data": {"type": BROWSER_MESSAGE_TYPE, "data": data}},
        separators=(",", ":"),
        ensure_ascii=False,
    )


# OpenAI Realtime client events (GA shapes).

_APPEND_HEAD: Final = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL: Final = '"}'
_b2a = binascii.b2a_base64


def audio_append(pcm: bytes) -> str:
    """``input_audio_buffer.append`` for one frame of microphone audio.

    Base64 is plain ASCII and needs no JSON escaping, so the event is two constant
    strings around it: no dict and no ``json.dumps`` per frame.
    """
    return _APPEND_HEAD + _b2a(pcm, newline=False).decode("ascii") + _APPEND_TAIL


def item_truncate(item_id: str, audio_end_ms: int) -> str:
    """Cut the model's audio item to what the visitor heard."""
    return json.dumps(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": audio_end_ms,
        }
    )


RESPONSE_CANCEL: Final = '{"type":"response.cancel"}'
RESPONSE_CREATE: Final = '{"type":"response.create"}'


def function_call_output(call_id: str, output: str) -> str:
    """A tool's result, added to the conversation for the model's next response."""
    return json.dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }
    )


def response_with_instructions(instructions: str, *, out_of_band: bool = False) -> str:
    """``response.create`` with instructions for this response only.

    Out of band (``conversation: "none"``) the response neither reads nor joins the
    conversation's items: the "checking" notice uses it so that it leaves no trace
    the model could answer later.
    """
    response: dict[str, Any] = {"instructions": instructions}
    if out_of_band:
        response["conversation"] = "none"
    return json.dumps({"type": "response.create", "response": response})


# How a message from the visitor's page reads to the model: the visitor's own
# input (a user item), marked as not spoken, never an instruction of the site's.
PAGE_MESSAGE_TEXT: Final = "(Not spoken: the visitor's web page sent this message.) {data}"


def page_message(data: dict[str, Any]) -> str:
    """A message from the visitor's page, added to the conversation as the visitor's input."""
    text = PAGE_MESSAGE_TEXT.format(
        data=json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    )
    return json.dumps(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )


# The event_id of the one session.update: an error naming it means OpenAI refused the
# session's configuration (an unknown voice or model, a malformed tool), and the call
# would go on without the site's instructions and tools.
SESSION_UPDATE_EVENT_ID = "django_avaturn_session_update"


def session_update(session: dict[str, Any]) -> str:
    return json.dumps(
        {"type": "session.update", "event_id": SESSION_UPDATE_EVENT_ID, "session": session}
    )
