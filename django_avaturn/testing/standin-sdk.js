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
    video.textContent =
      `Stand-in avatar: session ${session.id} is live on the loopback fake. ` +
      "There is no video or audio offline.";
    // Fills the element given, as the real player's video does (100% by 100%).
    // Through the CSSOM, which a strict style-src allows (a style attribute it would not).
    for (const [name, value] of Object.entries({
      display: "grid",
      "place-items": "center",
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

function withSlash(url) {
  return url.endsWith("/") ? url : `${url}/`;
}
