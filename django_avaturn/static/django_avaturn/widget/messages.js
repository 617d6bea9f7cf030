// The widget's words: the status line's messages and which one each answer
// of the session API shows. Pure: nothing here touches the page.

// Messages for the status region when the template has no translation.
export const FALLBACK_MESSAGES = {
  idle: "Press Start to talk with the avatar.",
  connecting: "Connecting…",
  live: "Live: speak to the avatar.",
  ended: "The conversation has ended.",
  mic_on: "Mute microphone",
  mic_off: "Unmute microphone",
  not_authenticated: "Please sign in to talk with the avatar.",
  permission_denied: "You are not allowed to start a conversation.",
  session_limit_reached:
    "You already have the most conversations allowed running. End one and try again.",
  quota_exceeded: "You have used your conversation allowance for now. Please come back later.",
  site_busy: "All avatars are busy right now. Please try again in a minute.",
  sessions_disabled: "Avatar conversations are switched off at the moment.",
  session_replaced: "A newer conversation replaced this one.",
  previous_still_ending:
    "Your previous conversation is still ending. Please try again in a moment.",
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
export const ERROR_CODE_MESSAGES = {
  not_authenticated: "not_authenticated",
  authentication_failed: "not_authenticated",
  permission_denied: "permission_denied",
  session_limit_reached: "session_limit_reached",
  throttled: "throttled",
  quota_exceeded: "quota_exceeded",
  site_limit_reached: "site_busy",
  sessions_disabled: "sessions_disabled",
  session_replaced: "session_replaced",
  session_still_ending: "previous_still_ending",
  // Staff (or the expiry command) ended the session while it was starting.
  session_ended: "ended",
  upstream_error: "upstream_unavailable",
  upstream_timeout: "upstream_unavailable",
  not_configured: "upstream_unavailable",
  unavailable: "upstream_unavailable",
  invalid: "invalid",
  parse_error: "invalid",
};

// The message key for a refused start: our error code when there is one,
// else the HTTP status (a proxy's page, an answer that is not ours).
export function messageKeyFor(status, code) {
  if (ERROR_CODE_MESSAGES[code]) return ERROR_CODE_MESSAGES[code];
  if (status === 401 || status === 403) return "not_authenticated";
  if (status === 409) return "session_limit_reached";
  if (status === 429) return "throttled";
  if (status === 400) return "invalid";
  if (status >= 500) return "upstream_unavailable";
  return "unknown";
}

// Heartbeat answers that end the session on the page. 404/409: the backend
// already ended (or never knew) this session. 401/403: this page can no
// longer act for its visitor (signed out in another tab, which ends their
// sessions): unheard, the session would end as idle anyway, and Stop would
// be refused too.
export const HEARTBEAT_ENDING_STATUSES = [401, 403, 404, 409];

// The message key for a heartbeat answer that ended the session.
export function heartbeatEndKey(status, code) {
  if (status === 401 || status === 403) return "not_authenticated";
  return ERROR_CODE_MESSAGES[code] || "ended";
}

// The fallbacks, overridden by the (translated) messages the template
// renders in the container's <template data-avaturn-messages>.
export function readMessages(container) {
  const messages = { ...FALLBACK_MESSAGES };
  const template = container.querySelector("template[data-avaturn-messages]");
  for (const node of template ? template.content.querySelectorAll("[data-key]") : []) {
    messages[node.dataset.key] = node.textContent.trim();
  }
  return messages;
}
