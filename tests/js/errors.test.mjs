// The widget's own timer on the SDK's init().
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  WidgetError,
  withTimeout,
} from "../../django_avaturn/static/django_avaturn/widget/errors.js";

test("a WidgetError carries its message key and cause", () => {
  const cause = new Error("boom");
  const error = new WidgetError("connect_failed", cause);
  assert.ok(error instanceof Error);
  assert.equal(error.name, "WidgetError");
  assert.equal(error.key, "connect_failed");
  assert.equal(error.detail, cause);
});

test("a promise that settles in time passes through, value or failure", async () => {
  assert.equal(await withTimeout(Promise.resolve("joined"), 1000), "joined");
  const refused = new Error("refused");
  await assert.rejects(withTimeout(Promise.reject(refused), 1000), refused);
});

test("one that never settles fails with the 'timeout' key", async () => {
  await assert.rejects(
    withTimeout(new Promise(() => {}), 10),
    (error) => error instanceof WidgetError && error.key === "timeout",
  );
});
