// Messages between the page and the site engine: the SDK's app messages
// become `avaturn:message` events, and sendMessage() posts to the session
// API. The widget itself runs here on a container without a browser.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import {
  APP_MESSAGE_TYPE,
  MessageError,
  appMessageData,
  messagesUrl,
  postMessage,
} from "../../django_avaturn/static/django_avaturn/widget/appmessages.js";
import { AvaturnWidget, handle } from "../../django_avaturn/static/django_avaturn/widget/widget.js";

const BASE = "https://site.example/talk/";
const PLACEHOLDER = "__session_id__";

// A fetch that records its calls and answers each with `status` and `body`
// (an Error to reject with instead).
function recordingFetch(status, body = null) {
  const calls = [];
  const fetchImpl = (url, options) => {
    calls.push({ url, options });
    if (status instanceof Error) return Promise.reject(status);
    return Promise.resolve({
      status,
      ok: status >= 200 && status < 300,
      json: () => (body === null ? Promise.reject(new SyntaxError("no JSON")) : body),
    });
  };
  return { fetchImpl, calls };
}

describe("appMessageData", () => {
  test("our app message gives its inner data, the very object", () => {
    const data = { kind: "card", title: "Order 42", items: [1, 2] };
    assert.equal(appMessageData({ type: APP_MESSAGE_TYPE, data }), data);
  });

  test("anything else gives null", () => {
    for (const message of [
      null,
      undefined,
      "django_avaturn.message",
      [APP_MESSAGE_TYPE],
      { type: "avatar_started_speaking", data: { a: 1 } },
      { type: APP_MESSAGE_TYPE },
      { type: APP_MESSAGE_TYPE, data: null },
      { type: APP_MESSAGE_TYPE, data: "text" },
      { type: APP_MESSAGE_TYPE, data: [1, 2] },
    ]) {
      assert.equal(appMessageData(message), null, JSON.stringify(message));
    }
  });
});

describe("messagesUrl", () => {
  test("derived from the session's detail URL when the tag renders none", () => {
    const config = { sessionUrl: `/avaturn/sessions/${PLACEHOLDER}/`, placeholder: PLACEHOLDER };
    assert.equal(
      messagesUrl(config, "fake sess/1", BASE),
      "https://site.example/avaturn/sessions/fake%20sess%2F1/messages/",
    );
  });

  test("the rendered template when there is one", () => {
    const config = {
      sessionUrl: `/avaturn/sessions/${PLACEHOLDER}/`,
      messagesUrl: `/api/${PLACEHOLDER}/say-to/`,
      placeholder: PLACEHOLDER,
    };
    assert.equal(messagesUrl(config, "s1", BASE), "/api/s1/say-to/");
  });
});

describe("postMessage", () => {
  test("POSTs {data} as JSON with the CSRF token and resolves on 204", async () => {
    const { fetchImpl, calls } = recordingFetch(204);
    const data = { kind: "note", text: "hi" };
    assert.equal(await postMessage(fetchImpl, "/m/", "tok", data), undefined);
    assert.equal(calls.length, 1);
    const [{ url, options }] = calls;
    assert.equal(url, "/m/");
    assert.equal(options.method, "POST");
    assert.equal(options.credentials, "same-origin");
    assert.equal(options.headers["X-CSRFToken"], "tok");
    assert.equal(options.headers["Content-Type"], "application/json");
    assert.deepEqual(JSON.parse(options.body), { data });
  });

  test("{respond: true} asks the model to answer", async () => {
    const { fetchImpl, calls } = recordingFetch(204);
    await postMessage(fetchImpl, "/m/", "tok", { chose: "red" }, { respond: true });
    assert.deepEqual(JSON.parse(calls[0].options.body), { data: { chose: "red" }, respond: true });
  });

  test("an error answer rejects with the API's code, status and detail", async () => {
    const { fetchImpl } = recordingFetch(429, { code: "throttled", detail: "Slow down." });
    const error = await postMessage(fetchImpl, "/m/", "tok", { a: 1 }).catch((e) => e);
    assert.ok(error instanceof MessageError);
    assert.equal(error.code, "throttled");
    assert.equal(error.status, 429);
    assert.equal(error.detail, "Slow down.");
  });

  test("an answer that is not ours is 'unknown'; no answer is 'network'", async () => {
    const proxy = await postMessage(recordingFetch(502).fetchImpl, "/m/", "", { a: 1 }).catch(
      (e) => e,
    );
    assert.equal(proxy.code, "unknown");
    assert.equal(proxy.status, 502);
    assert.equal(proxy.detail, null);
    const cause = new TypeError("Failed to fetch");
    const lost = await postMessage(recordingFetch(cause).fetchImpl, "/m/", "", { a: 1 }).catch(
      (e) => e,
    );
    assert.equal(lost.code, "network");
    assert.equal(lost.status, 0);
    assert.equal(lost.cause, cause);
  });

  test("data that is not a JSON object is refused before any request", async () => {
    const { fetchImpl, calls } = recordingFetch(202);
    const cyclic = {};
    cyclic.self = cyclic;
    for (const bad of [null, "text", [1], 3, cyclic, { n: 10n }]) {
      await assert.rejects(postMessage(fetchImpl, "/m/", "", bad), TypeError);
    }
    assert.equal(calls.length, 0);
  });
});

// A widget container as much as the widget touches of one: events, its
// data-* attributes, no buttons or status line of its own.
class FakeContainer extends EventTarget {
  constructor(dataset) {
    super();
    this.dataset = dataset;
    this.style = { setProperty() {} };
    this.isConnected = true;
  }
  querySelector() {
    return null;
  }
  setAttribute() {}
  replaceChildren() {}
}

// The SDK's head as the widget uses it: on(type, callback) and dispose().
class FakeHead {
  constructor() {
    this.handlers = {};
  }
  on(name, callback) {
    this.handlers[name] = [...(this.handlers[name] || []), callback];
  }
  emit(name, data) {
    for (const callback of this.handlers[name] || []) callback(data);
  }
  dispose() {}
}

describe("the widget", () => {
  let saved;
  beforeEach(() => {
    saved = { document: globalThis.document, fetch: globalThis.fetch };
    globalThis.document = { baseURI: BASE, cookie: "csrftoken=from-cookie" };
  });
  afterEach(() => {
    globalThis.document = saved.document;
    globalThis.fetch = saved.fetch;
  });

  // A widget live on session `s-1` with `head`, and every event it dispatched.
  function liveWidget() {
    const container = new FakeContainer({
      sessionsUrl: "/avaturn/sessions/",
      sessionUrl: `/avaturn/sessions/${PLACEHOLDER}/`,
      heartbeatUrl: `/avaturn/sessions/${PLACEHOLDER}/heartbeat/`,
      abandonUrl: "/avaturn/sessions/abandon/",
      sdkUrl: "https://cdn.example/main.js",
      csrfToken: "rendered",
    });
    const widget = new AvaturnWidget(container);
    const events = [];
    container.addEventListener("avaturn:message", (event) => events.push(event));
    const head = new FakeHead();
    widget.head = head;
    widget.listen(head);
    widget.state = "live";
    widget.sessionId = "s-1";
    return { container, widget, head, events };
  }

  test("our app message is an avaturn:message event: bubbling, composed, detail the data", () => {
    const { container, head, events } = liveWidget();
    const data = { kind: "card", title: "Your order", url: "/orders/42/" };
    head.emit(APP_MESSAGE_TYPE, { type: APP_MESSAGE_TYPE, data });
    assert.equal(events.length, 1);
    const [event] = events;
    assert.ok(event instanceof CustomEvent);
    assert.equal(event.type, "avaturn:message");
    assert.equal(event.bubbles, true);
    assert.equal(event.composed, true);
    assert.equal(event.target, container);
    assert.deepEqual(event.detail, data);
  });

  test("nothing for a malformed message, or one from a head already left", () => {
    const { widget, head, events } = liveWidget();
    head.emit(APP_MESSAGE_TYPE, { type: APP_MESSAGE_TYPE, data: "not an object" });
    head.emit(APP_MESSAGE_TYPE, { type: "something.else", data: { a: 1 } });
    widget.head = new FakeHead(); // a Stop and a new Start: the old head is disposed
    head.emit(APP_MESSAGE_TYPE, { type: APP_MESSAGE_TYPE, data: { late: true } });
    assert.equal(events.length, 0);
  });

  test("sendMessage posts to the session's messages URL with the cookie's CSRF token", async () => {
    const { widget } = liveWidget();
    const { fetchImpl, calls } = recordingFetch(202, {});
    globalThis.fetch = fetchImpl;
    await handle(widget).sendMessage({ kind: "filter", value: "red" });
    assert.equal(calls.length, 1);
    assert.equal(calls[0].url, "https://site.example/avaturn/sessions/s-1/messages/");
    assert.equal(calls[0].options.headers["X-CSRFToken"], "from-cookie");
    assert.deepEqual(JSON.parse(calls[0].options.body), {
      data: { kind: "filter", value: "red" },
    });
  });

  test("sendMessage without a live session rejects as not_live and sends nothing", async () => {
    const { widget } = liveWidget();
    const { fetchImpl, calls } = recordingFetch(202, {});
    globalThis.fetch = fetchImpl;
    widget.state = "connecting";
    const connecting = await widget.sendMessage({ a: 1 }).catch((e) => e);
    assert.ok(connecting instanceof MessageError);
    assert.equal(connecting.code, "not_live");
    widget.state = "ended";
    widget.sessionId = null;
    assert.equal((await widget.sendMessage({ a: 1 }).catch((e) => e)).code, "not_live");
    assert.equal(calls.length, 0);
  });
});
