// Messages between the page and its conversation's engine (the site engine).
//
// Engine → page: the engine wraps what a tool or the site sends as an app
// message `{type: APP_MESSAGE_TYPE, data: {...}}`; the web SDK hands any app
// message with a `type` to `head.on(type, callback)`, and the widget
// re-dispatches the inner `data` as an `avaturn:message` event.
// Page → engine: the SDK cannot send arbitrary data, so a page posts it to the
// session API (`messages/` under the session's URL), which passes it on.

import { apiRequest, detailUrl, errorCode, readJson } from "./request.js";

// Namespaced, so it can never be one of the SDK's own event names.
export const APP_MESSAGE_TYPE = "django_avaturn.message";

export function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// The inner data of one of our app messages, or null for anything else.
export function appMessageData(message) {
  if (!isPlainObject(message) || message.type !== APP_MESSAGE_TYPE) return null;
  return isPlainObject(message.data) ? message.data : null;
}

// A page's message that did not reach its conversation: `code` is the API's
// error code (or "not_live" when the widget has no live session, "network"
// when no answer came), `status` the HTTP status (0 without one).
export class MessageError extends Error {
  constructor(code, { status = 0, detail = null, cause } = {}) {
    super(`the message was not sent: ${code}`, cause === undefined ? undefined : { cause });
    this.name = "MessageError";
    this.code = code;
    this.status = status;
    this.detail = detail;
  }
}

// The session's messages endpoint: the template's own URL when the tag
// renders one, else `messages/` under the session's detail URL.
export function messagesUrl(config, sessionId, baseURI) {
  if (config.messagesUrl) return detailUrl(config.messagesUrl, config.placeholder, sessionId);
  const detail = detailUrl(config.sessionUrl, config.placeholder, sessionId);
  return new URL("messages/", new URL(detail, baseURI)).href;
}

// POST `{data}` (and `respond: true` when asked) to `url`; resolves once the
// API accepted it (204), rejects with a TypeError for data that is not a JSON
// object, or a MessageError.
export async function postMessage(fetchImpl, url, csrfToken, data, { respond = false } = {}) {
  if (!isPlainObject(data)) throw new TypeError("sendMessage(data): data must be an object");
  try {
    JSON.stringify(data);
  } catch (error) {
    throw new TypeError(`sendMessage(data): data must be JSON: ${error.message}`);
  }
  let response;
  try {
    const json = respond ? { data, respond: true } : { data };
    response = await apiRequest(fetchImpl, url, { csrfToken, json, acceptJson: true });
  } catch (error) {
    throw new MessageError("network", { cause: error });
  }
  if (response.ok) return;
  const payload = await readJson(response);
  throw new MessageError(errorCode(payload) || "unknown", {
    status: response.status,
    detail: payload?.detail ?? null,
  });
}
