// A widget's configuration from its data-* attributes, and the start's reference.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import {
  flag,
  newClientRef,
  positiveNumber,
  readConfig,
  sendsTranscripts,
} from "../../django_avaturn/static/django_avaturn/widget/config.js";

const BASE = "https://site.example/talk/";

describe("flag and positiveNumber", () => {
  test("a flag is true only when spelled 'true'; missing is the default", () => {
    assert.equal(flag("true", false), true);
    assert.equal(flag("false", true), false);
    assert.equal(flag("yes", true), false);
    assert.equal(flag(undefined, true), true);
    assert.equal(flag(undefined, false), false);
  });

  test("a positive finite number, else the default", () => {
    assert.equal(positiveNumber("2.5", 20), 2.5);
    for (const bad of ["0", "-1", "abc", "Infinity", undefined]) {
      assert.equal(positiveNumber(bad, 20), 20, String(bad));
    }
  });
});

describe("readConfig", () => {
  test("what the bare tag renders", () => {
    const config = readConfig(
      {
        sessionsUrl: "/avaturn/sessions/",
        sessionUrl: "/avaturn/sessions/__session_id__/",
        heartbeatUrl: "/avaturn/sessions/__session_id__/heartbeat/",
        abandonUrl: "/avaturn/sessions/abandon/",
        sessionIdPlaceholder: "__session_id__",
        engine: "openai-realtime",
        sdkUrl: "https://cdn.example/main.js",
        sdkIntegrity: "sha384-x",
        audioSource: "true",
        autostart: "false",
        initTimeout: "20",
        heartbeatInterval: "30",
        csrfToken: "tok",
        csrfCookieName: "csrftoken",
        loginUrl: "/accounts/login/?next=/",
      },
      BASE,
    );
    assert.deepEqual(config, {
      sessionsUrl: "/avaturn/sessions/",
      sessionUrl: "/avaturn/sessions/__session_id__/",
      heartbeatUrl: "/avaturn/sessions/__session_id__/heartbeat/",
      abandonUrl: "/avaturn/sessions/abandon/",
      transcriptsUrl: "",
      messagesUrl: "",
      engine: "openai-realtime",
      placeholder: "__session_id__",
      sdkUrl: "https://cdn.example/main.js",
      sdkIntegrity: "sha384-x",
      audioSource: true,
      autostart: false,
      initTimeoutMs: 20000,
      heartbeatMs: 30000,
      avatarId: "",
      configName: "",
      csrfToken: "tok",
      csrfCookieName: "csrftoken",
      loginUrl: "/accounts/login/?next=/",
    });
  });

  test("an older template: the abandon URL derived, defaults for the rest", () => {
    const config = readConfig({ sessionsUrl: "/avaturn/sessions/" }, BASE);
    assert.equal(config.abandonUrl, "https://site.example/avaturn/sessions/abandon/");
    assert.equal(config.placeholder, "__session_id__");
    assert.equal(config.audioSource, true);
    assert.equal(config.initTimeoutMs, 20000);
    assert.equal(config.heartbeatMs, 30000);
    assert.equal(config.csrfCookieName, "csrftoken");
  });

  test("an empty cookie name (CSRF_USE_SESSIONS) stays empty", () => {
    assert.equal(readConfig({ sessionsUrl: "/s/", csrfCookieName: "" }, BASE).csrfCookieName, "");
  });
});

// The API's rule for client_ref, read from the model that enforces it.
function serverRule() {
  const models = readFileSync(new URL("../../django_avaturn/models.py", import.meta.url), "utf8");
  const pattern = models.match(/^CLIENT_REF_PATTERN = r"(.+)"$/m)[1];
  const min = Number(models.match(/^CLIENT_REF_MIN_LENGTH = (\d+)$/m)[1]);
  const max = Number(models.match(/^CLIENT_REF_MAX_LENGTH = (\d+)$/m)[1]);
  return (ref) => new RegExp(pattern).test(ref) && ref.length >= min && ref.length <= max;
}

describe("newClientRef", () => {
  const accepted = serverRule();

  test("with randomUUID (a secure context): accepted by the API, fresh each time", () => {
    const refs = new Set(Array.from({ length: 50 }, () => newClientRef(globalThis.crypto)));
    assert.equal(refs.size, 50);
    for (const ref of refs) assert.ok(accepted(ref), ref);
  });

  test("without randomUUID (plain http): 32 hex digits, accepted by the API", () => {
    const { getRandomValues } = globalThis.crypto;
    const insecure = { getRandomValues: (array) => getRandomValues.call(globalThis.crypto, array) };
    const refs = new Set(Array.from({ length: 50 }, () => newClientRef(insecure)));
    assert.equal(refs.size, 50);
    for (const ref of refs) {
      assert.match(ref, /^[0-9a-f]{32}$/);
      assert.ok(accepted(ref), ref);
    }
  });

  test("the fallback pads every byte to two digits", () => {
    const zeros = { getRandomValues: (array) => array.fill(0x0a) };
    assert.equal(newClientRef(zeros), "0a".repeat(16));
  });
});

describe("the engine", () => {
  test("read from data-engine, openai-realtime when a template predates it", () => {
    assert.equal(readConfig({ sessionsUrl: "/s/", engine: "cartesia" }, BASE).engine, "cartesia");
    assert.equal(readConfig({ sessionsUrl: "/s/" }, BASE).engine, "openai-realtime");
  });

  test("only openai-realtime sends transcripts: the widget posts none for the others", () => {
    assert.equal(sendsTranscripts("openai-realtime"), true);
    for (const engine of ["cartesia", "external", "text-echo", "", undefined]) {
      assert.equal(sendsTranscripts(engine), false, String(engine));
    }
  });

  test("the widget asks before posting a transcript line", () => {
    const source = readFileSync(
      new URL("../../django_avaturn/static/django_avaturn/widget/widget.js", import.meta.url),
      "utf8",
    );
    const save = source.slice(source.indexOf("saveTranscript(role, detail) {"));
    const guard = save.indexOf("sendsTranscripts(this.engine || this.config.engine)");
    assert.ok(guard > 0 && guard < save.indexOf("apiRequest("));
  });
});
