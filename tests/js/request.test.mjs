// The session API requests' helper: node --test tests/js/ (no browser).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  apiRequest,
  csrfTokenFrom,
  detailUrl,
  END_RETRIES,
  endRetryDelay,
  errorCode,
  readCookie,
  readJson,
  sendUntilDone,
} from "../../django_avaturn/static/django_avaturn/widget/request.js";

// A fetch that records its calls and answers each with the next of `answers`
// (a status, or an Error to reject with).
function recordingFetch(...answers) {
  const calls = [];
  const fetchImpl = (url, options) => {
    calls.push({ url, options });
    const answer = answers.length > 1 ? answers.shift() : answers[0];
    if (answer instanceof Error) return Promise.reject(answer);
    return Promise.resolve({ status: answer, ok: answer >= 200 && answer < 300 });
  };
  return { fetchImpl, calls };
}

// Runs scheduled callbacks at once, recording their delays.
function recordingSchedule() {
  const delays = [];
  const schedule = (callback, ms) => {
    delays.push(ms);
    queueMicrotask(callback);
  };
  return { schedule, delays };
}

// Lets every pending promise callback (and the queued retries) run.
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

describe("readCookie", () => {
  test("finds one cookie among several, decoded, '=' in the value kept", () => {
    const cookies = "sessionid=abc; csrftoken=t%2Bk%3Dn=x;theme=dark";
    assert.equal(readCookie(cookies, "csrftoken"), "t+k=n=x");
    assert.equal(readCookie(cookies, "theme"), "dark");
    assert.equal(readCookie(cookies, "sessionid"), "abc");
  });

  test("a name is matched whole, not as a prefix or suffix", () => {
    assert.equal(readCookie("xcsrftoken=a; csrftokenx=b", "csrftoken"), "");
  });

  test("no cookies at all is an empty string", () => {
    assert.equal(readCookie("", "csrftoken"), "");
  });
});

describe("csrfTokenFrom", () => {
  test("the cookie wins over the token rendered into the page", () => {
    assert.equal(csrfTokenFrom("csrftoken=rotated", "csrftoken", "rendered"), "rotated");
  });

  test("the rendered token when the cookie is missing or empty", () => {
    assert.equal(csrfTokenFrom("other=1", "csrftoken", "rendered"), "rendered");
    assert.equal(csrfTokenFrom("csrftoken=", "csrftoken", "rendered"), "rendered");
  });

  test("a site that keeps the token in the session (no cookie name) never reads cookies", () => {
    assert.equal(csrfTokenFrom("csrftoken=stale", "", "rendered"), "rendered");
  });

  test("the site's own cookie name", () => {
    assert.equal(csrfTokenFrom("csrftoken=a; site_csrf=b", "site_csrf", "r"), "b");
  });
});

describe("detailUrl", () => {
  const placeholder = "__session_id__";

  test("puts the session id in place of the placeholder, encoded", () => {
    assert.equal(
      detailUrl("/avaturn/sessions/__session_id__/heartbeat/", placeholder, "a b/c"),
      "/avaturn/sessions/a%20b%2Fc/heartbeat/",
    );
  });

  test("only the last occurrence: the id is the URL's last variable part", () => {
    assert.equal(
      detailUrl("/__session_id__/sessions/__session_id__/", placeholder, "s1"),
      "/__session_id__/sessions/s1/",
    );
  });

  test("a URL without the placeholder is left alone", () => {
    assert.equal(detailUrl("/avaturn/sessions/", placeholder, "s1"), "/avaturn/sessions/");
  });
});

describe("apiRequest", () => {
  test("a start: JSON both ways, the cookies and the CSRF header", async () => {
    const { fetchImpl, calls } = recordingFetch(201);
    await apiRequest(fetchImpl, "/avaturn/sessions/", {
      csrfToken: "tok",
      json: { client_ref: "r".repeat(32) },
      acceptJson: true,
    });
    assert.deepEqual(calls, [
      {
        url: "/avaturn/sessions/",
        options: {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "Content-Type": "application/json",
            Accept: "application/json",
            "X-CSRFToken": "tok",
          },
          body: JSON.stringify({ client_ref: "r".repeat(32) }),
        },
      },
    ]);
  });

  test("a heartbeat: no body, no content type", async () => {
    const { fetchImpl, calls } = recordingFetch(204);
    await apiRequest(fetchImpl, "/hb/", { csrfToken: "tok" });
    assert.deepEqual(calls[0].options, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": "tok" },
    });
  });

  test("a transcript line: JSON, kept alive past the page", async () => {
    const { fetchImpl, calls } = recordingFetch(201);
    await apiRequest(fetchImpl, "/t/", {
      csrfToken: "tok",
      json: { role: "user", text: "hi" },
      keepalive: true,
    });
    assert.deepEqual(calls[0].options, {
      method: "POST",
      credentials: "same-origin",
      keepalive: true,
      headers: { "Content-Type": "application/json", "X-CSRFToken": "tok" },
      body: '{"role":"user","text":"hi"}',
    });
  });

  test("a fetch that throws at once throws to the caller, not as a rejection", () => {
    const failing = () => {
      throw new TypeError("unloading");
    };
    assert.throws(() => apiRequest(failing, "/x/", { csrfToken: "t" }), TypeError);
  });
});

describe("readJson and errorCode", () => {
  test("our error answer's code", async () => {
    const response = { json: async () => ({ code: "throttled", detail: "slow down" }) };
    assert.equal(errorCode(await readJson(response)), "throttled");
  });

  test("a body that is not JSON (a proxy's page) reads as null, with no code", async () => {
    const response = {
      json: async () => {
        throw new SyntaxError("Unexpected token <");
      },
    };
    assert.equal(await readJson(response), null);
    assert.equal(errorCode(null), "");
  });

  test("a code that is not a string is not ours", () => {
    assert.equal(errorCode({ code: 42 }), "");
    assert.equal(errorCode({ detail: "no code" }), "");
    assert.equal(errorCode("session_ended"), "");
  });
});

describe("ending a session: sendUntilDone", () => {
  test("the retry schedule is 2, 4 and 8 seconds", () => {
    assert.equal(END_RETRIES, 3);
    assert.deepEqual([3, 2, 1].map(endRetryDelay), [2000, 4000, 8000]);
  });

  test("a 5xx is retried three times, then given up", async () => {
    const { fetchImpl, calls } = recordingFetch(502);
    const { schedule, delays } = recordingSchedule();
    sendUntilDone(fetchImpl, () => ["/s/1/", { method: "DELETE", csrfToken: "t" }], { schedule });
    await settle();
    assert.equal(calls.length, 1 + END_RETRIES);
    assert.deepEqual(delays, [2000, 4000, 8000]);
    for (const { url, options } of calls) {
      assert.equal(url, "/s/1/");
      assert.deepEqual(options, {
        method: "DELETE",
        credentials: "same-origin",
        keepalive: true,
        headers: { "X-CSRFToken": "t" },
      });
    }
  });

  test("a lost request is retried like a 5xx, and stops at the first answer", async () => {
    const { fetchImpl, calls } = recordingFetch(new TypeError("network"), 503, 204);
    const { schedule, delays } = recordingSchedule();
    sendUntilDone(fetchImpl, () => ["/s/1/", { method: "DELETE", csrfToken: "t" }], { schedule });
    await settle();
    assert.equal(calls.length, 3);
    assert.deepEqual(delays, [2000, 4000]);
  });

  for (const status of [204, 403, 404, 409]) {
    test(`a ${status} is an answer: not retried`, async () => {
      const { fetchImpl, calls } = recordingFetch(status);
      const { schedule, delays } = recordingSchedule();
      sendUntilDone(fetchImpl, () => ["/s/1/", { method: "DELETE", csrfToken: "t" }], {
        schedule,
      });
      await settle();
      assert.equal(calls.length, 1);
      assert.deepEqual(delays, []);
    });
  }

  test("each try asks for the request afresh: a rotated CSRF token is sent", async () => {
    const { fetchImpl, calls } = recordingFetch(500, 204);
    const { schedule } = recordingSchedule();
    let token = "before";
    sendUntilDone(
      fetchImpl,
      () => ["/abandon/", { method: "POST", csrfToken: token, json: { client_ref: "r" } }],
      {
        schedule: (callback, ms) => {
          token = "after";
          schedule(callback, ms);
        },
      },
    );
    await settle();
    assert.deepEqual(
      calls.map(({ options }) => [options.headers["X-CSRFToken"], options.body]),
      [
        ["before", '{"client_ref":"r"}'],
        ["after", '{"client_ref":"r"}'],
      ],
    );
  });

  test("a fetch that throws at once (a page unloading) is not retried, nor thrown", async () => {
    const { schedule, delays } = recordingSchedule();
    let tries = 0;
    const throwing = () => {
      tries++;
      throw new TypeError("unloading");
    };
    sendUntilDone(throwing, () => ["/s/1/", { method: "DELETE", csrfToken: "t" }], { schedule });
    await settle();
    assert.equal(tries, 1);
    assert.deepEqual(delays, []);
  });
});
