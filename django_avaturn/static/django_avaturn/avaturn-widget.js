// django-avaturn: the browser side of {% avaturn_head %}.
//
// ES modules, no build step: this entry module and the ones it imports from
// widget/ (static files beside it). It finds every [data-avaturn-widget]
// container, reads its configuration from data-* attributes, and on Start:
// loads the Avaturn web SDK (a browser that cannot run it creates nothing),
// asks our backend for a session (the API keys never leave the server), and
// connects. Everything it learns is re-dispatched as
// `avaturn:<event>` CustomEvents on the container.
//
// Public handle: `container.avaturn` (or `window.djangoAvaturn.get(container)`)
// is `{head, state, sessionId, microphoneOn, start(), stop(), setMicrophone(on),
// sendMessage(data, {respond})}`.

import { AvaturnWidget, handle } from "./widget/widget.js";

const SELECTOR = "[data-avaturn-widget]";
const STATES = ["idle", "connecting", "live", "ended", "error"];

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
