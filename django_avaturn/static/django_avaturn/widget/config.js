// A widget's configuration, read from its container's data-* attributes
// (which {% avaturn_head %} renders), and the reference of each start.

export function flag(value, fallback) {
  if (value === undefined) return fallback;
  return value === "true";
}

export function positiveNumber(value, fallback) {
  const number = Number(value);
  return Number.isFinite(number) && number > 0 ? number : fallback;
}

// Only Avaturn's openai-realtime engine sends transcript events to the SDK:
// with any other engine the widget has no words to post.
export function sendsTranscripts(engine) {
  return engine === "openai-realtime";
}

// `dataset` is the container's; `baseURI` the page's, for derived URLs.
export function readConfig(data, baseURI) {
  return {
    sessionsUrl: data.sessionsUrl,
    sessionUrl: data.sessionUrl,
    heartbeatUrl: data.heartbeatUrl,
    // (Derived for a site template that predates the attribute.)
    abandonUrl: data.abandonUrl || new URL("abandon/", new URL(data.sessionsUrl, baseURI)).href,
    transcriptsUrl: data.transcriptsUrl || "",
    // (Derived from sessionUrl when the tag renders none: see appmessages.js.)
    messagesUrl: data.messagesUrl || "",
    // The site's conversation engine; a start's answer names the one it used.
    engine: data.engine || "openai-realtime",
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
}

// A fresh reference for each start, so the page can abandon it before it
// knows the session id. randomUUID() needs a secure context; getRandomValues
// does not. Either way the API's client_ref rule holds: 16 to 64 of
// [A-Za-z0-9_-].
export function newClientRef(cryptoImpl = crypto) {
  if (typeof cryptoImpl.randomUUID === "function") return cryptoImpl.randomUUID();
  return Array.from(cryptoImpl.getRandomValues(new Uint8Array(16)), (byte) =>
    byte.toString(16).padStart(2, "0"),
  ).join("");
}
