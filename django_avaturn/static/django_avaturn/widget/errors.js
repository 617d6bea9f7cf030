// How the widget fails: a WidgetError carries the message key the status
// line shows (see messages.js) and what caused it.

export class WidgetError extends Error {
  constructor(key, detail) {
    super(key);
    this.name = "WidgetError";
    this.key = key;
    this.detail = detail;
  }
}

// `promise`, or a WidgetError("timeout") after `ms` if it has not settled.
export function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new WidgetError("timeout")), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
