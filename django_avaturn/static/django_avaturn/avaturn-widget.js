// django-avaturn: the browser side of {% avaturn_head %}.
//
// One ES module, no build step. It finds every [data-avaturn-widget]
// container, reads its configuration from data-* attributes, and on Start:
// loads the Avaturn web SDK (a browser that cannot run it creates nothing),
// asks our backend for a session (the API keys never leave the server), and
// connects. Everything it learns is re-dispatched as
// `avaturn:<event>` CustomEvents on the container.
//
// Public handle: `container.avaturn` (or `window.djangoAvaturn.get(container)`)
// is `{head, state, sessionId, microphoneOn, start(), stop(), setMicrophone(on)}`.

const SELECTOR = "[data-avaturn-widget]";
// Ending (or abandoning) a session whose terminate failed: retried after 2, 4 and 8 s.
const END_RETRIES = 3;
const END_RETRY_DELAY_MS = 2000;
const STATES = ["idle", "connecting", "live", "ended", "error"];

// SDK events forwarded as `avaturn:<name>`. Transcripts are also forwarded
// under the shorter `avaturn:transcript` with a `role`.
const SDK_EVENTS = [
  "init",
  "task",
  "dispose",
  "idle",
  "error",
  "local_audio_change",
  "local_mic_state_change",
  "avatar_started_speaking",
  "avatar_ended_speaking",
  "avatar_started_speaking_phrase",
  "avatar_ended_speaking_phrase",
  "ce_events.realtime.input_transcript",
  "ce_events.realtime.response_transcript",
];
const TRANSCRIPT_ROLES = {
  "ce_events.realtime.input_transcript": "user",
  "ce_events.realtime.response_transcript": "avatar",
};

// Messages for the status region when the template has no translation.
const FALLBACK_MESSAGES = {
  idle: "Press Start to talk with the avatar.",
  connecting: "Connecting…",
  live: "Live: speak to the avatar.",
  ended: "The conversation has ended.",
  mic_on: "Mute microphone",
  mic_off: "Unmute microphone",
  not_authenticated: "Please sign in to talk with the avatar.",
  permission_denied: "You are not allowed to start a conversation.",
  session_limit_reached: "You already have the most conversations allowed running. End one and try again.",
  quota_exceeded: "You have used your conversation allowance for now. Please come back later.",
  site_busy: "All avatars are busy right now. Please try again in a minute.",
  sessions_disabled: "Avatar conversations are switched off at the moment.",
  session_replaced: "A newer conversation replaced this one.",
  throttled: "Too many attempts. Please wait a moment and try again.",
  upstream_unavailable: "The avatar service is unavailable right now. Please try again later.",
  invalid: "The conversation could not be started with these settings.",
  network: "Could not reach the server. Check your connection and try again.",
  sdk_load_failed: "The avatar player could not be loaded.",
  timeout: "The avatar did not connect in time. Please try again.",
  connect_failed: "Could not connect to the avatar. Please try again.",
  microphone_blocked: "Microphone access is blocked. Allow it in your browser to talk.",
  idle_timeout: "The conversation ended after a period of inactivity.",
  unknown: "Something went wrong. Please try again.",
};

// The API's error codes, mapped to a message key (see the API's error table).
const ERROR_CODE_MESSAGES = {
  not_authenticated: "not_authenticated",
  authentication_failed: "not_authenticated",
  permission_denied: "permission_denied",
  session_limit_reached: "session_limit_reached",
  throttled: "throttled",
  quota_exceeded: "quota_exceeded",
  site_limit_reached: "site_busy",
  sessions_disabled: "sessions_disabled",
  session_replaced: "session_replaced",
  // Staff (or the expiry command) ended the session while it was starting.
  session_ended: "ended",
  upstream_error: "upstream_unavailable",
  upstream_timeout: "upstream_unavailable",
  not_configured: "upstream_unavailable",
  unavailable: "upstream_unavailable",
  invalid: "invalid",
  parse_error: "invalid",
};

class WidgetError extends Error {
  constructor(key, detail) {
    super(key);
    this.name = "WidgetError";
    this.key = key;
    this.detail = detail;
  }
}

// One SDK module per page, whatever the number of widgets.
const sdkModules = new Map();

function loadSdk(url, integrity) {
  const absolute = new URL(url, document.baseURI).href;
  if (!sdkModules.has(absolute)) {
    const verified = integrity ? loadVerified(absolute, integrity) : Promise.resolve();
    const promise = verified.then(() => import(absolute));
    // A failed load may be retried by a later Start.
    promise.catch(() => sdkModules.delete(absolute));
    sdkModules.set(absolute, promise);
  }
  return sdkModules.get(absolute);
}

// import() cannot carry an integrity hash, and a failed
// <link rel=modulepreload integrity> does not stop a later import() of the
// same URL: Chromium simply fetches it again, unchecked. A
// <script type=module integrity> does enforce the hash. Once it has run, the
// module is in the document's module map and import() returns that very
// instance without fetching again; on a mismatch it fails and import() is
// never called.
function loadVerified(url, integrity) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.type = "module";
    script.src = url;
    script.integrity = integrity;
    script.crossOrigin = "anonymous";
    const nonce = pageNonce();
    if (nonce) script.nonce = nonce;
    script.addEventListener("load", () => resolve(), { once: true });
    script.addEventListener(
      "error",
      () => reject(new Error(`could not load ${url} with integrity ${integrity}`)),
      { once: true },
    );
    document.head.append(script);
  });
}

// The nonce the tag put on our own <script> (readable only as a property).
function pageNonce() {
  for (const script of document.scripts) if (script.nonce) return script.nonce;
  return "";
}

function readCookie(name) {
  for (const part of document.cookie ? document.cookie.split(";") : []) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

function flag(value, fallback) {
  if (value === undefined) return fallback;
  return value === "true";
}

function positiveNumber(value, fallback) {
  const number = Number(value);
  return Number.isFinite(number) && number > 0 ? number : fallback;
}

// A fresh reference for each start, so the page can abandon it before it
// knows the session id. randomUUID() needs a secure context; getRandomValues
// does not.
function newClientRef() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) =>
    byte.toString(16).padStart(2, "0"),
  ).join("");
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new WidgetError("timeout")), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

class AvaturnWidget {
  constructor(container) {
    this.container = container;
    this.head = null;
    this.state = "idle";
    this.sessionId = null;
    this.microphoneOn = false;
    this.attempt = 0; // bumped by every start and stop; stale awaits see it
    // The client_ref of the start whose answer has not come yet, if any.
    this.pendingRef = null;
    this.heartbeatTimer = null;

    const data = container.dataset;
    this.config = {
      sessionsUrl: data.sessionsUrl,
      sessionUrl: data.sessionUrl,
      heartbeatUrl: data.heartbeatUrl,
      // (Derived for a site template that predates the attribute.)
      abandonUrl:
        data.abandonUrl || new URL("abandon/", new URL(data.sessionsUrl, document.baseURI)).href,
      transcriptsUrl: data.transcriptsUrl || "",
      placeholder: data.sessionIdPlaceholder || "__session_id__",
      sdkUrl: data.sdkUrl,
      sdkIntegrity: data.sdkIntegrity || "",
      audioSource: flag(data.audioSource, true),
      autostart: flag(data.autostart, false),
      initTimeoutMs: positiveNumber(data.initTimeout, 20) * 1000,
      heartbeatMs: positiveNumber(data.heartbeatInterval, 30) * 1000,
      avatarId: data.avatarId || "",
      configName: data.config || "",
      csrfToken: data.csrfToken || "",
      // Empty when the site keeps its CSRF token in the session (no cookie).
      csrfCookieName: data.csrfCookieName ?? "csrftoken",
      // LOGIN_URL with ?next= this page: the sign-in message links there.
      loginUrl: data.loginUrl || "",
    };
    this.stage = container.querySelector("[data-avaturn-stage]") || container;
    this.startButton = container.querySelector("[data-avaturn-start]");
    this.stopButton = container.querySelector("[data-avaturn-stop]");
    this.micButton = container.querySelector("[data-avaturn-mic]");
    this.status = container.querySelector("[data-avaturn-status]");
    this.messages = this.readMessages();

    // Sizes go through the CSSOM, which a strict style-src allows.
    if (data.width) container.style.setProperty("--avaturn-width", data.width);
    if (data.height) container.style.setProperty("--avaturn-height", data.height);

    this.startButton?.addEventListener("click", () => this.start());
    this.stopButton?.addEventListener("click", () => this.stop());
    this.micButton?.addEventListener("click", () => this.setMicrophone(!this.microphoneOn));

    // The markup renders Start disabled and a "loading" status, which stay
    // for good on a page where this script never runs.
    if (this.startButton) this.startButton.disabled = false;
    if (this.status) this.status.textContent = this.messages.idle;
  }

  readMessages() {
    const messages = { ...FALLBACK_MESSAGES };
    const template = this.container.querySelector("template[data-avaturn-messages]");
    for (const node of template ? template.content.querySelectorAll("[data-key]") : []) {
      messages[node.dataset.key] = node.textContent.trim();
    }
    return messages;
  }

  emit(name, detail) {
    this.container.dispatchEvent(
      new CustomEvent(`avaturn:${name}`, { detail, bubbles: true, composed: true }),
    );
  }

  setState(state, { message, error, href } = {}) {
    const previous = this.state;
    this.state = state;
    this.container.dataset.state = state;
    const busy = state === "connecting" || state === "live";
    if (this.startButton) {
      this.startButton.disabled = busy;
      // Stays in place (disabled) while connecting: a double click on Start
      // must not land on the Stop button that would otherwise take its spot.
      this.startButton.hidden = state === "live";
    }
    if (this.stopButton) this.stopButton.hidden = !busy;
    if (this.micButton) this.micButton.hidden = state !== "live";
    this.container.setAttribute("aria-busy", state === "connecting" ? "true" : "false");
    const text = message || this.messages[state] || "";
    this.showStatus(text, href);
    this.emit("state", { state, previous, message: text, error: error || null });
  }

  showNotice(key) {
    this.showStatus(this.messages[key] || this.messages.unknown, this.linkFor(key));
  }

  // The status line, as a link when `href` is given (text only: never markup).
  showStatus(text, href) {
    if (!this.status) return;
    if (!href) {
      this.status.textContent = text;
      return;
    }
    const link = document.createElement("a");
    link.href = href;
    link.textContent = text;
    this.status.replaceChildren(link);
  }

  // Where a message links: the sign-in one to LOGIN_URL, when the site has one.
  linkFor(key) {
    return key === "not_authenticated" ? this.config.loginUrl : "";
  }

  // The cookie first: signing in again in another tab rotates it, and the
  // token rendered into this page when it loaded is then refused (403).
  csrfToken() {
    const current = this.config.csrfCookieName ? readCookie(this.config.csrfCookieName) : "";
    return current || this.config.csrfToken;
  }

  sessionUrl(template, sessionId) {
    // Replace the last occurrence: the id is the last variable part of the URL.
    const at = template.lastIndexOf(this.config.placeholder);
    if (at < 0) return template;
    return (
      template.slice(0, at) +
      encodeURIComponent(sessionId) +
      template.slice(at + this.config.placeholder.length)
    );
  }

  async start() {
    if (this.state === "connecting" || this.state === "live") return;
    const attempt = ++this.attempt;
    this.setState("connecting");
    // A previous session's video would otherwise stay under the new one.
    this.stage.replaceChildren();
    try {
      // The player before the session: a session is billed from its start,
      // so a browser that cannot run the player (CDN blocked, an ad blocker,
      // a wrong integrity hash) must not create one. The tag's
      // <link rel=modulepreload> has usually fetched it by the time of a click.
      let module;
      try {
        module = await loadSdk(this.config.sdkUrl, this.config.sdkIntegrity);
      } catch (error) {
        throw new WidgetError("sdk_load_failed", error);
      }
      if (attempt !== this.attempt) return;

      const clientRef = newClientRef();
      this.pendingRef = clientRef;
      let session;
      try {
        session = await this.createSession(clientRef);
      } finally {
        // Answered or failed: from here the session id, not the reference, ends it.
        if (this.pendingRef === clientRef) this.pendingRef = null;
      }
      if (attempt !== this.attempt) return this.endSession(session.session_id);
      this.sessionId = session.session_id;

      const head = new module.AvaturnHead(this.stage, {
        sessionToken: session.token,
        apiHost: session.api_host,
        audioSource: this.config.audioSource,
        immediatelyJoin: true,
      });
      this.head = head;
      this.microphoneOn = this.config.audioSource;
      this.listen(head);
      try {
        // init() may never settle offline (the room join); our own timer
        // bounds it whatever the SDK does with its own.
        await withTimeout(
          head.init({ timeout: this.config.initTimeoutMs }),
          this.config.initTimeoutMs,
        );
      } catch (error) {
        throw error instanceof WidgetError ? error : new WidgetError("connect_failed", error);
      }
      if (attempt !== this.attempt) return;
      this.setState("live");
      this.updateMicButton();
      this.startHeartbeat();
    } catch (error) {
      if (attempt !== this.attempt) return;
      if (!(error instanceof WidgetError)) console.error("[django-avaturn]", error);
      this.fail(
        error instanceof WidgetError ? error.key : "unknown",
        error instanceof WidgetError ? error.detail : error,
      );
    }
  }

  // A start that gets no answer of ours (the network, or a proxy that gave up
  // on it) may still be running on the server: it is abandoned by its reference.
  async createSession(clientRef) {
    const body = { client_ref: clientRef };
    if (this.config.avatarId) body.avatar_id = this.config.avatarId;
    if (this.config.configName) body.config = this.config.configName;
    let response;
    try {
      response = await fetch(this.config.sessionsUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRFToken": this.csrfToken(),
        },
        body: JSON.stringify(body),
      });
    } catch (error) {
      this.abandonStart(clientRef);
      throw new WidgetError("network", error);
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (!response.ok) {
      const code = payload && typeof payload.code === "string" ? payload.code : "";
      // Our 4xx answers mean nothing runs; a 5xx or a proxy's page may not.
      if (!code || response.status >= 500) this.abandonStart(clientRef);
      throw new WidgetError(messageKeyFor(response.status, code), {
        status: response.status,
        code,
        detail: payload && payload.detail,
      });
    }
    if (!payload || !payload.session_id || !payload.token || !payload.api_host) {
      this.abandonStart(clientRef);
      throw new WidgetError("unknown", { status: response.status });
    }
    return payload;
  }

  listen(head) {
    for (const name of SDK_EVENTS) {
      head.on(name, (detail) => {
        if (this.head !== head) return; // a disposed head's late events
        this.emit(name, detail);
        if (name in TRANSCRIPT_ROLES) {
          this.emit("transcript", { role: TRANSCRIPT_ROLES[name], ...(detail || {}) });
          this.saveTranscript(TRANSCRIPT_ROLES[name], detail);
        }
        this.onSdkEvent(name, detail);
      });
    }
  }

  onSdkEvent(name, detail) {
    if (name === "local_audio_change" && typeof detail === "boolean") {
      this.microphoneOn = detail;
      this.updateMicButton();
    } else if (name === "local_mic_state_change" && detail === "blocked") {
      this.microphoneOn = false;
      this.updateMicButton();
      this.showNotice("microphone_blocked");
    } else if (name === "idle") {
      // The SDK drops the stream after its idle timeout; end ours too.
      this.stop({ message: this.messages.idle_timeout });
    } else if (name === "dispose") {
      // The SDK ended the call on its side (our own dispose() is not heard:
      // teardown forgets the head first). Nobody can use the session now.
      this.stop();
    } else if (name === "error") {
      // The SDK's errors (limits_exceeded, internal_error, a version
      // mismatch) end the call: end the session too, or it bills on unused.
      this.fail(this.state === "connecting" ? "connect_failed" : "unknown", detail);
    }
  }

  fail(key, detail) {
    this.attempt++;
    this.teardown();
    this.setState("error", {
      message: this.messages[key] || this.messages.unknown,
      error: { code: key, detail },
      href: this.linkFor(key),
    });
  }

  setMicrophone(on) {
    on = Boolean(on);
    if (!this.head || this.state !== "live" || on === this.microphoneOn) return;
    // toggleLocalAudio(v) sets `v || !current`: only call it for a real change.
    this.head.toggleLocalAudio(on);
    this.microphoneOn = on;
    this.updateMicButton();
  }

  updateMicButton() {
    if (!this.micButton) return;
    this.micButton.setAttribute("aria-pressed", this.microphoneOn ? "false" : "true");
    this.micButton.textContent = this.microphoneOn ? this.messages.mic_on : this.messages.mic_off;
  }

  // Only rendered when the site stores transcripts (AVATURN["TRANSCRIPTS_ENABLED"]).
  saveTranscript(role, detail) {
    const text = detail && typeof detail.transcript === "string" ? detail.transcript.trim() : "";
    if (!this.config.transcriptsUrl || !this.sessionId || !text) return;
    const body = { role, text };
    if (typeof detail.timestamp === "number" && detail.timestamp >= 0) body.timestamp = detail.timestamp;
    fetch(this.sessionUrl(this.config.transcriptsUrl, this.sessionId), {
      method: "POST",
      credentials: "same-origin",
      // keepalive: the last words may be spoken just before the page goes away.
      keepalive: true,
      headers: { "Content-Type": "application/json", "X-CSRFToken": this.csrfToken() },
      body: JSON.stringify(body),
    }).catch(() => {
      // A lost line is not worth interrupting the conversation for.
    });
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.config.heartbeatMs);
  }

  stopHeartbeat() {
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  async heartbeat() {
    const sessionId = this.sessionId;
    if (!sessionId || this.state !== "live") return;
    try {
      const response = await fetch(this.sessionUrl(this.config.heartbeatUrl, sessionId), {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": this.csrfToken() },
      });
      // 404/409: the backend already ended (or never knew) this session.
      // 401/403: this page can no longer act for its visitor (signed out in
      // another tab, which ends their sessions): unheard, the session would
      // end as idle anyway, and Stop would be refused too.
      if (![401, 403, 404, 409].includes(response.status)) return;
      const code = await response.json().then((body) => body && body.code, () => undefined);
      // A late answer about a session already left (Stop, then Start) must
      // not end the one that replaced it.
      if (this.sessionId !== sessionId) return;
      const key =
        response.status === 401 || response.status === 403
          ? "not_authenticated"
          : ERROR_CODE_MESSAGES[code] || "ended";
      this.stop({ message: this.messages[key], href: this.linkFor(key) });
    } catch {
      // A missed beat is not an ending; the next one may get through.
    }
  }

  // Stop button, pagehide, removal from the page, idle: end everything now.
  stop({ message, href } = {}) {
    const wasActive = this.state === "connecting" || this.state === "live";
    this.attempt++;
    this.teardown();
    if (wasActive) this.setState("ended", { message, href });
  }

  teardown() {
    this.stopHeartbeat();
    const head = this.head;
    this.head = null;
    if (head) {
      // dispose() is local only and throws when init() never created a call.
      try {
        Promise.resolve(head.dispose()).catch(() => {});
      } catch {
        // nothing to release
      }
    }
    this.stage.replaceChildren();
    if (this.sessionId) {
      this.endSession(this.sessionId);
      this.sessionId = null;
    }
    if (this.pendingRef) {
      // Left mid-start (pagehide, Stop, removal): the session id is not known yet.
      this.abandonStart(this.pendingRef);
      this.pendingRef = null;
    }
  }

  // Only the backend can end the Avaturn session at once (dispose() never
  // tells Avaturn).
  endSession(sessionId) {
    if (!sessionId) return;
    this.sendUntilDone(() => [
      this.sessionUrl(this.config.sessionUrl, sessionId),
      { method: "DELETE", headers: { "X-CSRFToken": this.csrfToken() } },
    ]);
  }

  // The page left a start before its answer came (see createSession too):
  // the backend ends whatever that start creates, found by its reference.
  abandonStart(clientRef) {
    this.sendUntilDone(() => [
      this.config.abandonUrl,
      {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": this.csrfToken() },
        body: JSON.stringify({ client_ref: clientRef }),
      },
    ]);
  }

  // keepalive lets the request outlive a closing tab. When the backend could
  // not reach Avaturn (a 5xx: the session stays live for a retry) or the
  // request was lost, try again while the page is still here. request()
  // gives [url, options] afresh for each try: the CSRF token may rotate.
  sendUntilDone(request, retriesLeft = END_RETRIES) {
    const retry = () => {
      if (retriesLeft <= 0) return;
      const delay = END_RETRY_DELAY_MS * 2 ** (END_RETRIES - retriesLeft);
      setTimeout(() => this.sendUntilDone(request, retriesLeft - 1), delay);
    };
    try {
      const [url, options] = request();
      fetch(url, { ...options, credentials: "same-origin", keepalive: true }).then((response) => {
        if (response.status >= 500) retry();
      }, retry);
    } catch {
      // fetch itself can throw while the page is unloading
    }
  }
}

function messageKeyFor(status, code) {
  if (ERROR_CODE_MESSAGES[code]) return ERROR_CODE_MESSAGES[code];
  if (status === 401 || status === 403) return "not_authenticated";
  if (status === 409) return "session_limit_reached";
  if (status === 429) return "throttled";
  if (status === 400) return "invalid";
  if (status >= 500) return "upstream_unavailable";
  return "unknown";
}

function handle(widget) {
  return {
    get head() {
      return widget.head;
    },
    get state() {
      return widget.state;
    },
    get sessionId() {
      return widget.sessionId;
    },
    get microphoneOn() {
      return widget.microphoneOn;
    },
    start: () => widget.start(),
    stop: () => widget.stop(),
    setMicrophone: (on) => widget.setMicrophone(on),
  };
}

// The widgets on the page: pagehide and removals end their sessions.
const widgets = new Set();
// Every widget this module made, on the page or not.
const widgetOf = new WeakMap();

function setUp(container) {
  const known = widgetOf.get(container);
  if (known) {
    // Back on the page after a removal (a swap, a move): tracked again, or
    // its next session would outlive the page.
    widgets.add(known);
    return container.avaturn;
  }
  // Idempotent: a second module evaluation or a re-scan never doubles up.
  if (container.avaturn) return container.avaturn;
  const widget = new AvaturnWidget(container);
  container.avaturn = handle(widget);
  widgetOf.set(container, widget);
  widgets.add(widget);
  if (widget.config.autostart) widget.start();
  return container.avaturn;
}

function init(root = document) {
  if (root instanceof Element && root.matches(SELECTOR)) setUp(root);
  for (const container of root.querySelectorAll(SELECTOR)) setUp(container);
}

function stopRemoved() {
  for (const widget of widgets) {
    if (!widget.container.isConnected) {
      widget.stop();
      widgets.delete(widget);
    }
  }
}

if (!window.djangoAvaturn) {
  window.djangoAvaturn = {
    init,
    get: (container) => container?.avaturn || null,
    states: STATES,
  };

  // The page is going away (or into the back/forward cache): no avatar may
  // keep running, and keepalive DELETEs still reach the server.
  window.addEventListener("pagehide", () => {
    for (const widget of widgets) widget.stop();
  });

  // Widgets added later (htmx swaps, client-side rendering) start working,
  // and removed ones end their session.
  new MutationObserver((records) => {
    let removed = false;
    for (const record of records) {
      for (const node of record.addedNodes) if (node instanceof Element) init(node);
      if (record.removedNodes.length) removed = true;
    }
    if (removed) stopRemoved();
  }).observe(document.documentElement, { childList: true, subtree: true });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => init(), { once: true });
  } else {
    init();
  }
}
