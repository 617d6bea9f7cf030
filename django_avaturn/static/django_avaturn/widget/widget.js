// One widget: its container's buttons and status line, the SDK's head, and
// the session behind them, from Start to its end.

import {
  APP_MESSAGE_TYPE,
  MessageError,
  appMessageData,
  messagesUrl,
  postMessage,
} from "./appmessages.js";
import { readConfig, newClientRef, sendsTranscripts } from "./config.js";
import { WidgetError, withTimeout } from "./errors.js";
import {
  HEARTBEAT_ENDING_STATUSES,
  heartbeatEndKey,
  messageKeyFor,
  readMessages,
} from "./messages.js";
import {
  apiRequest,
  csrfTokenFrom,
  detailUrl,
  errorCode,
  readJson,
  sendUntilDone,
} from "./request.js";
import { loadSdk } from "./sdk.js";

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

// The page's fetch, looked up at each call (and called as fetch itself is).
const pageFetch = (url, options) => fetch(url, options);

export class AvaturnWidget {
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
    this.config = readConfig(data, document.baseURI);
    this.stage = container.querySelector("[data-avaturn-stage]") || container;
    this.startButton = container.querySelector("[data-avaturn-start]");
    this.stopButton = container.querySelector("[data-avaturn-stop]");
    this.micButton = container.querySelector("[data-avaturn-mic]");
    this.status = container.querySelector("[data-avaturn-status]");
    this.messages = readMessages(container);

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

  // The CSRF token to send now (see csrfTokenFrom).
  csrfToken() {
    return csrfTokenFrom(document.cookie, this.config.csrfCookieName, this.config.csrfToken);
  }

  sessionUrl(template, sessionId) {
    return detailUrl(template, this.config.placeholder, sessionId);
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
      this.engine = session.engine || this.config.engine;

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
      response = await apiRequest(pageFetch, this.config.sessionsUrl, {
        csrfToken: this.csrfToken(),
        json: body,
        acceptJson: true,
      });
    } catch (error) {
      this.abandonStart(clientRef);
      throw new WidgetError("network", error);
    }
    const payload = await readJson(response);
    if (!response.ok) {
      const code = errorCode(payload);
      // Our 4xx answers mean nothing runs; a 5xx or a proxy's page may not.
      if (!code || response.status >= 500) this.abandonStart(clientRef);
      throw new WidgetError(messageKeyFor(response.status, code), {
        status: response.status,
        code,
        // biome-ignore lint/complexity/useOptionalChain: null (not undefined) for a body that is not JSON
        detail: payload && payload.detail,
      });
    }
    if (!payload?.session_id || !payload.token || !payload.api_host) {
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
    // The engine's messages for the page (see appmessages.js): the inner data only.
    head.on(APP_MESSAGE_TYPE, (message) => {
      if (this.head !== head) return;
      const data = appMessageData(message);
      if (data) this.emit("message", data);
    });
  }

  // A message to this page's own live conversation, through the session API:
  // the model reads it as the visitor's input; `{respond: true}` has it answer.
  sendMessage(data, options = {}) {
    if (this.state !== "live" || !this.sessionId) {
      return Promise.reject(new MessageError("not_live"));
    }
    const url = messagesUrl(this.config, this.sessionId, document.baseURI);
    return postMessage(pageFetch, url, this.csrfToken(), data, options);
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
    if (!sendsTranscripts(this.engine || this.config.engine)) return;
    const body = { role, text };
    if (typeof detail.timestamp === "number" && detail.timestamp >= 0) {
      body.timestamp = detail.timestamp;
    }
    apiRequest(pageFetch, this.sessionUrl(this.config.transcriptsUrl, this.sessionId), {
      csrfToken: this.csrfToken(),
      json: body,
      // keepalive: the last words may be spoken just before the page goes away.
      keepalive: true,
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
      const response = await apiRequest(
        pageFetch,
        this.sessionUrl(this.config.heartbeatUrl, sessionId),
        { csrfToken: this.csrfToken() },
      );
      if (!HEARTBEAT_ENDING_STATUSES.includes(response.status)) return;
      const code = errorCode(await readJson(response));
      // A late answer about a session already left (Stop, then Start) must
      // not end the one that replaced it.
      if (this.sessionId !== sessionId) return;
      const key = heartbeatEndKey(response.status, code);
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
    sendUntilDone(pageFetch, () => [
      this.sessionUrl(this.config.sessionUrl, sessionId),
      { method: "DELETE", csrfToken: this.csrfToken() },
    ]);
  }

  // The page left a start before its answer came (see createSession too):
  // the backend ends whatever that start creates, found by its reference.
  abandonStart(clientRef) {
    sendUntilDone(pageFetch, () => [
      this.config.abandonUrl,
      { method: "POST", csrfToken: this.csrfToken(), json: { client_ref: clientRef } },
    ]);
  }
}

// The public handle: `container.avaturn`.
export function handle(widget) {
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
    sendMessage: (data, options) => widget.sendMessage(data, options),
  };
}
