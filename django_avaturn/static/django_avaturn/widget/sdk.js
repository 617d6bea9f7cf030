// The Avaturn web SDK's loader: one SDK module per page, whatever the
// number of widgets, checked against its integrity hash when one is set.

const sdkModules = new Map();

// The SDK module at `url` (resolved against the page), loaded once; a
// failed load may be retried by a later Start.
export function loadSdk(url, integrity, doc = document) {
  const absolute = new URL(url, doc.baseURI).href;
  if (!sdkModules.has(absolute)) {
    const verified = integrity ? loadVerified(absolute, integrity, doc) : Promise.resolve();
    const promise = verified.then(() => import(absolute));
    promise.catch(() => sdkModules.delete(absolute));
    sdkModules.set(absolute, promise);
  }
  return sdkModules.get(absolute);
}

// import() cannot carry an integrity hash, and a failed
// <link rel=modulepreload integrity> does not stop a later import() of the
// same URL: Chromium simply fetches it again, unchecked. A
// <script type=module integrity> does enforce the hash. Once it has run, the
// module is in the document's module map and import() returns that very
// instance without fetching again; on a mismatch it fails and import() is
// never called.
export function loadVerified(url, integrity, doc = document) {
  return new Promise((resolve, reject) => {
    const script = doc.createElement("script");
    script.type = "module";
    script.src = url;
    script.integrity = integrity;
    script.crossOrigin = "anonymous";
    const nonce = pageNonce(doc);
    if (nonce) script.nonce = nonce;
    script.addEventListener("load", () => resolve(), { once: true });
    script.addEventListener(
      "error",
      () => reject(new Error(`could not load ${url} with integrity ${integrity}`)),
      { once: true },
    );
    doc.head.append(script);
  });
}

// The nonce the tag put on our own <script> (readable only as a property).
export function pageNonce(doc = document) {
  for (const script of doc.scripts) if (script.nonce) return script.nonce;
  return "";
}
