// The SDK loader, against a stand-in document (no browser): data: URLs play the SDK.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { loadSdk, pageNonce } from "../../django_avaturn/static/django_avaturn/widget/sdk.js";

let serial = 0;
// A module URL no other test uses (the loader keeps one promise per URL).
function sdkUrl(source = "export class AvaturnHead {}") {
  serial += 1;
  return `data:text/javascript,${encodeURIComponent(`${source}\nexport const serial = ${serial};`)}`;
}

// A document whose <script> elements load (or fail) as soon as they are appended.
function fakeDocument({ nonces = [], outcome = "load" } = {}) {
  const appended = [];
  return {
    baseURI: "https://site.example/talk/",
    scripts: nonces.map((nonce) => ({ nonce })),
    appended,
    createElement(tag) {
      const listeners = {};
      return {
        tag,
        addEventListener(type, listener, options) {
          assert.deepEqual(options, { once: true });
          listeners[type] = listener;
        },
        fire(type) {
          listeners[type]?.();
        },
      };
    },
    head: {
      append(script) {
        appended.push(script);
        queueMicrotask(() => script.fire(outcome));
      },
    },
  };
}

describe("loadSdk", () => {
  test("without integrity: the module itself, loaded once per URL", async () => {
    const doc = fakeDocument();
    const url = sdkUrl();
    const first = loadSdk(url, "", doc);
    assert.equal(loadSdk(url, "", doc), first);
    const module = await first;
    assert.equal(typeof module.AvaturnHead, "function");
    assert.deepEqual(doc.appended, []);
  });

  test("with integrity: a checked module script first, with the page's nonce", async () => {
    const doc = fakeDocument({ nonces: ["", "n0nce"] });
    const url = sdkUrl();
    const module = await loadSdk(url, "sha384-abc", doc);
    assert.equal(typeof module.AvaturnHead, "function");
    const [script] = doc.appended;
    assert.deepEqual(
      {
        tag: script.tag,
        type: script.type,
        src: script.src,
        integrity: script.integrity,
        crossOrigin: script.crossOrigin,
        nonce: script.nonce,
      },
      {
        tag: "script",
        type: "module",
        src: url,
        integrity: "sha384-abc",
        crossOrigin: "anonymous",
        nonce: "n0nce",
      },
    );
    // A second widget's Start reuses it: no second script.
    await loadSdk(url, "sha384-abc", doc);
    assert.equal(doc.appended.length, 1);
  });

  test("an integrity mismatch never imports, and a later Start tries again", async () => {
    const doc = fakeDocument({ outcome: "error" });
    const url = sdkUrl();
    await assert.rejects(loadSdk(url, "sha384-wrong", doc), /could not load .* with integrity/);
    await assert.rejects(loadSdk(url, "sha384-wrong", doc));
    assert.equal(doc.appended.length, 2);
  });

  test("a module that fails to load is forgotten: the next call imports again", async () => {
    const doc = fakeDocument();
    const url = sdkUrl("export const = ;");
    const first = loadSdk(url, "", doc);
    await assert.rejects(first, SyntaxError);
    const second = loadSdk(url, "", doc);
    assert.notEqual(second, first);
    await assert.rejects(second, SyntaxError);
  });

  test("a relative URL is resolved against the page", async () => {
    const doc = fakeDocument({ outcome: "error" });
    await assert.rejects(loadSdk("../vendor/main.js", "sha384-x", doc));
    assert.equal(doc.appended[0].src, "https://site.example/vendor/main.js");
  });
});

test("pageNonce: the first script's nonce, or none", () => {
  assert.equal(pageNonce(fakeDocument({ nonces: ["", "a", "b"] })), "a");
  assert.equal(pageNonce(fakeDocument({ nonces: [""] })), "");
  assert.equal(pageNonce(fakeDocument()), "");
});
