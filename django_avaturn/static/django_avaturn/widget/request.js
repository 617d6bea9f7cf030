// The widget's requests to the session API, through one helper: the start,
// the heartbeat, a transcript line, and ending or abandoning a session.
// Whatever needs the page (fetch, the cookie string, timers) is passed in.

// Ending (or abandoning) a session whose terminate failed: retried after 2, 4 and 8 s.
export const END_RETRIES = 3;
export const END_RETRY_DELAY_MS = 2000;

// One cookie's value out of a `document.cookie` string, or "".
export function readCookie(cookies, name) {
  for (const part of cookies ? cookies.split(";") : []) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

// The cookie first: signing in again in another tab rotates it, and the
// token rendered into this page when it loaded is then refused (403). An
// empty cookie name means the site keeps its token in the session.
export function csrfTokenFrom(cookies, cookieName, renderedToken) {
  const current = cookieName ? readCookie(cookies, cookieName) : "";
  return current || renderedToken;
}

// A detail URL for one session: the template's placeholder replaced by the
// id. The last occurrence: the id is the last variable part of the URL.
export function detailUrl(template, placeholder, sessionId) {
  const at = template.lastIndexOf(placeholder);
  if (at < 0) return template;
  return (
    template.slice(0, at) + encodeURIComponent(sessionId) + template.slice(at + placeholder.length)
  );
}

// Every request to the session API: the visitor's cookies (same-origin
// credentials) and the CSRF header; `json` as a JSON body; `acceptJson` for
// an answer read as JSON; `keepalive` for one that must outlive a closing
// tab. Not async: a fetch that throws at once (a page unloading) throws to
// the caller, as a call of fetch itself would.
export function apiRequest(
  fetchImpl,
  url,
  { method = "POST", csrfToken = "", json, acceptJson = false, keepalive = false } = {},
) {
  const headers = {};
  if (json !== undefined) headers["Content-Type"] = "application/json";
  if (acceptJson) headers.Accept = "application/json";
  headers["X-CSRFToken"] = csrfToken;
  const options = { method, credentials: "same-origin", headers };
  if (keepalive) options.keepalive = true;
  if (json !== undefined) options.body = JSON.stringify(json);
  return fetchImpl(url, options);
}

// The answer's JSON body, or null when it has none (a proxy's HTML page).
export async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// The `code` of one of our error answers, or "" when the body is not ours.
export function errorCode(payload) {
  return payload && typeof payload.code === "string" ? payload.code : "";
}

// The wait before a retry while `retriesLeft` remain: 2, 4, then 8 s.
export function endRetryDelay(retriesLeft) {
  return END_RETRY_DELAY_MS * 2 ** (END_RETRIES - retriesLeft);
}

// For ending a session: keepalive lets the request outlive a closing tab.
// When the backend could not reach Avaturn (a 5xx: the session stays live
// for a retry) or the request was lost, try again while the page is still
// here. makeRequest() gives [url, apiRequest options] afresh for each try:
// the CSRF token may rotate.
export function sendUntilDone(
  fetchImpl,
  makeRequest,
  { schedule = setTimeout, retriesLeft = END_RETRIES } = {},
) {
  const retry = () => {
    if (retriesLeft <= 0) return;
    schedule(
      () => sendUntilDone(fetchImpl, makeRequest, { schedule, retriesLeft: retriesLeft - 1 }),
      endRetryDelay(retriesLeft),
    );
  };
  try {
    const [url, options] = makeRequest();
    apiRequest(fetchImpl, url, { ...options, keepalive: true }).then((response) => {
      if (response.status >= 500) retry();
    }, retry);
  } catch {
    // fetch itself can throw while the page is unloading
  }
}
