// A stand-in for @avaturn-live/web-sdk, served by the loopback fake at
// /_fake/sdk/main.js (its printed settings point SDK_URL here).
//
// Offline, the real SDK cannot go live: it loads from a CDN and joins a
// Daily video call, neither of which a fake can answer. This module has the
// surface the widget uses, and does the part of a join the fake can check:
// it presents the session token to the fake's SDK endpoint, as the real SDK
// presents it to Avaturn, so a widget goes live only with a token the fake
// issued for a session that is still running. There is no audio or video.
//
// Once live it polls the fake for the engine's messages to the page (what a
// site engine sends with sdk.message.send; FakeUpstream.send_browser_message),
// hands each to head.on(message.type) as the real SDK does with an app
// message, and shows it as a card under its placeholder text.
//
// Browser tests drive it through window.stubHeads (emit an SDK event, read
// the options it was given, the microphone toggles, whether it was disposed).
export class AvaturnHead {
  constructor(element, options) {
    this.element = element;
    this.options = options;
    this.handlers = {};
    this.localAudio = Boolean(options.audioSource);
    this.toggles = [];
    this.disposed = false;
    this.messagesSeen = 0;
    this.messageList = null;
    (window.stubHeads ||= []).push(this);
  }

  on(name, callback) {
    (this.handlers[name] ||= []).push(callback);
  }

  off(name, callback) {
    this.handlers[name] = (this.handlers[name] || []).filter((cb) => cb !== callback);
  }

  emit(name, data) {
    for (const callback of this.handlers[name] || []) callback(data);
  }

  async init() {
    const answer = await fetch(new URL("_sdk/v0/sessions", withSlash(this.options.apiHost)), {
      headers: { "X-Session-Token": this.options.sessionToken },
    });
    if (!answer.ok) {
      throw new Error(`the fake refused the session token (${answer.status})`);
    }
    const session = await answer.json();
    const video = document.createElement("div");
    video.className = "stub-video";
    const text = document.createElement("p");
    text.textContent =
      `Stand-in avatar: session ${session.id} is live on the loopback fake. ` +
      "There is no video or audio offline.";
    text.style.setProperty("margin", "0");
    this.messageList = document.createElement("ul");
    this.messageList.className = "stub-messages";
    this.messageList.setAttribute("aria-label", "Messages from the conversation");
    for (const [name, value] of Object.entries({
      "list-style": "none",
      margin: "0",
      padding: "0",
      display: "grid",
      gap: "0.5rem",
      "max-height": "100%",
      overflow: "auto",
      "text-align": "left",
    })) {
      this.messageList.style.setProperty(name, value);
    }
    video.append(text, this.messageList);
    // Fills the element given, as the real player's video does (100% by 100%).
    // Through the CSSOM, which a strict style-src allows (a style attribute it would not).
    for (const [name, value] of Object.entries({
      display: "grid",
      "place-items": "center",
      "align-content": "center",
      gap: "0.75rem",
      "box-sizing": "border-box",
      width: "100%",
      height: "100%",
      padding: "1rem",
      "text-align": "center",
      background: "#eef2f7",
      color: "#1f2937",
    })) {
      video.style.setProperty(name, value);
    }
    this.element.append(video);
    this.emit("local_audio_change", this.localAudio);
    this.pollMessages();
  }

  // Until dispose() or the session's end (the fake then refuses the token).
  async pollMessages() {
    while (!this.disposed) {
      let found = null;
      try {
        const url = new URL("_sdk/v0/sessions/messages", withSlash(this.options.apiHost));
        url.searchParams.set("after", String(this.messagesSeen));
        const answer = await fetch(url, {
          headers: { "X-Session-Token": this.options.sessionToken },
        });
        if (!answer.ok) return; // the session ended
        found = await answer.json();
      } catch {
        // the fake stopped, or the page is going away: try again
      }
      if (this.disposed) return;
      if (found) {
        this.messagesSeen = found.next;
        for (const message of found.messages) this.deliver(message);
      }
      await new Promise((resolve) => setTimeout(resolve, MESSAGE_POLL_MS));
    }
  }

  // As the real SDK does with an app message: to the handlers of its type.
  deliver(message) {
    this.showMessage(message);
    this.emit(message.type, message);
  }

  // A card: each field of the message's data (the whole message when it has
  // none), as text only.
  showMessage(message) {
    if (!this.messageList) return;
    const data =
      message.data && typeof message.data === "object" && !Array.isArray(message.data)
        ? message.data
        : message;
    const card = document.createElement("li");
    card.className = "stub-message";
    for (const [name, value] of Object.entries({
      background: "#ffffff",
      border: "1px solid #cbd5e1",
      "border-radius": "0.375rem",
      padding: "0.5rem 0.75rem",
      "overflow-wrap": "anywhere",
    })) {
      card.style.setProperty(name, value);
    }
    for (const [key, value] of Object.entries(data)) {
      const line = document.createElement("div");
      const label = document.createElement("strong");
      label.textContent = `${key}: `;
      line.append(label, typeof value === "string" ? value : JSON.stringify(value));
      card.append(line);
    }
    this.messageList.append(card);
  }

  // The real SDK's semantics: `v || !current`.
  toggleLocalAudio(value) {
    this.toggles.push(value);
    this.localAudio = value || !this.localAudio;
    this.emit("local_audio_change", this.localAudio);
  }

  async dispose() {
    this.disposed = true;
  }
}

const MESSAGE_POLL_MS = 300;

function withSlash(url) {
  return url.endsWith("/") ? url : `${url}/`;
}
