// The status line's messages and which answer shows which.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ERROR_CODE_MESSAGES,
  FALLBACK_MESSAGES,
  HEARTBEAT_ENDING_STATUSES,
  heartbeatEndKey,
  messageKeyFor,
  readMessages,
} from "../../django_avaturn/static/django_avaturn/widget/messages.js";

describe("messageKeyFor: a refused start's message", () => {
  test("our code decides, whatever the status", () => {
    assert.equal(messageKeyFor(503, "site_limit_reached"), "site_busy");
    assert.equal(messageKeyFor(403, "sessions_disabled"), "sessions_disabled");
    assert.equal(messageKeyFor(409, "session_ended"), "ended");
    assert.equal(messageKeyFor(400, "parse_error"), "invalid");
    assert.equal(messageKeyFor(401, "authentication_failed"), "not_authenticated");
    assert.equal(messageKeyFor(502, "upstream_timeout"), "upstream_unavailable");
    // A 503 that is not the service's fault: the visitor's last conversation is still ending.
    assert.equal(messageKeyFor(503, "session_still_ending"), "previous_still_ending");
  });

  test("without a code of ours, the status", () => {
    const byStatus = [
      [401, "not_authenticated"],
      [403, "not_authenticated"],
      [409, "session_limit_reached"],
      [429, "throttled"],
      [400, "invalid"],
      [500, "upstream_unavailable"],
      [502, "upstream_unavailable"],
      [504, "upstream_unavailable"],
      [404, "unknown"],
      [418, "unknown"],
    ];
    for (const [status, key] of byStatus) {
      assert.equal(messageKeyFor(status, ""), key, `status ${status}`);
      assert.equal(messageKeyFor(status, "a_code_we_never_send"), key, `status ${status}`);
    }
  });
});

describe("heartbeatEndKey: why a live session ended", () => {
  test("only these answers end it", () => {
    assert.deepEqual(HEARTBEAT_ENDING_STATUSES, [401, 403, 404, 409]);
  });

  test("signed out (401/403) asks to sign in, whatever the code", () => {
    assert.equal(heartbeatEndKey(401, ""), "not_authenticated");
    assert.equal(heartbeatEndKey(403, "session_replaced"), "not_authenticated");
  });

  test("404/409: the code's message, else 'ended'", () => {
    assert.equal(heartbeatEndKey(409, "session_replaced"), "session_replaced");
    assert.equal(heartbeatEndKey(409, "session_ended"), "ended");
    assert.equal(heartbeatEndKey(404, ""), "ended");
    assert.equal(heartbeatEndKey(404, "not_found"), "ended");
  });
});

test("every error code maps to a message the widget has", () => {
  for (const [code, key] of Object.entries(ERROR_CODE_MESSAGES)) {
    assert.ok(key in FALLBACK_MESSAGES, `${code} -> ${key}`);
  }
});

// A container whose <template data-avaturn-messages> holds these spans.
function containerWith(entries) {
  const nodes = Object.entries(entries ?? {}).map(([key, text]) => ({
    dataset: { key },
    textContent: text,
  }));
  return {
    querySelector: (selector) =>
      selector === "template[data-avaturn-messages]" && entries !== null
        ? { content: { querySelectorAll: (inner) => (inner === "[data-key]" ? nodes : []) } }
        : null,
  };
}

describe("readMessages", () => {
  test("the template's translations replace the fallbacks, trimmed", () => {
    const messages = readMessages(containerWith({ idle: "\n  Appuyez sur Démarrer.  \n" }));
    assert.equal(messages.idle, "Appuyez sur Démarrer.");
    assert.equal(messages.connecting, FALLBACK_MESSAGES.connecting);
  });

  test("no template: the fallbacks, as a copy", () => {
    const messages = readMessages(containerWith(null));
    assert.deepEqual(messages, FALLBACK_MESSAGES);
    messages.idle = "changed";
    assert.notEqual(FALLBACK_MESSAGES.idle, "changed");
  });
});
