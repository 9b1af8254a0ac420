// Drives the bothost page in headless Chromium like a user would:
// register, chat and watch the reply stream, lose the WebSocket (banner at
// once), send through the REST fallback, send while nothing gets through,
// get the connection back and see the queued message answered, live through
// a host restart (1012) in about a second, and check
// that nothing shows or is stored twice and that message text stays text.
//
// Usage: node chat.mjs BASE_URL SCREENSHOT_DIR   (exit 0 on success)
import { chromium } from "playwright-core";

const [base, shots] = process.argv.slice(2);
const step = (msg) => console.log(`- ${msg}`);
const fail = (msg) => { throw new Error(msg); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});
const page = await browser.newPage();
page.on("pageerror", (e) => console.log("page error:", e.message));
// No markup in a message or reply may open a dialog or reach another host.
let expectDialog = false;
const unexpected = [];
page.on("dialog", (d) => { if (!expectDialog) { unexpected.push(`dialog: ${d.message()}`); d.dismiss(); } });
page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("ws")) unexpected.push(`request: ${r.url()}`); });
// Answers the next dialogs (prompts, confirms, alerts) with `answers`, in order.
const answer = (...answers) => {
  expectDialog = true;
  const next = async (d) => {
    await d.accept(answers.shift());
    if (answers.length) page.once("dialog", next); else expectDialog = false;
  };
  page.once("dialog", next);
};
page.on("console", (m) => console.log("console:", m.text()));

// Every WebSocket goes through this proxy, so the test can cut it, or play
// a host restart: refuse the next message as `restarting` and close with
// 1012, as a host does when it shuts down (tests/shutdown.rs checks the
// host's side of that).
let wsBlocked = false;
let restartNext = false;
let busyNext = null;   // {code, message, retry_after}: answer the next "send" so
// A reply the proxy plays itself, for what the builtin bot cannot write
// (code blocks, links, tables) and for a reply that streams until stopped.
const MARKDOWN = "# Plan\n\nFirst:\n\n```js\nconst answer = 42;\n```\n\n" +
  "[docs](https://example.com/docs) and [trap](javascript:window.pwned=2)\n\n" +
  "| a | b |\n|---|---|\n| 1 | 2 |\n\n<script>window.pwned=3</script>\n";
let scripted = null;   // {content, chunks, hold}: a "send" with this content
const scriptedIds = new Set();
const sockets = [];
await page.routeWebSocket(/\/api\/v1\/ws/, (ws) => {
  if (wsBlocked) { ws.close(); return; }
  const server = ws.connectToServer();
  ws.onMessage((message) => {
    const frame = JSON.parse(message);
    // As if a first try of this message were still being answered, or
    // the user were over a limit.
    if (busyNext && frame.type === "send") {
      const busy = busyNext;
      busyNext = null;
      ws.send(JSON.stringify({ type: "error", client_msg_id: frame.client_msg_id, ...busy }));
      return;
    }
    if (scripted && frame.type === "send" && frame.content === scripted.content) {
      const id = frame.client_msg_id;
      const play = scripted;
      scripted = null;
      scriptedIds.add(id);
      ws.send(JSON.stringify({ type: "ack", client_msg_id: id, message_id: 900001, replay: false }));
      (async () => {
        for (const text of play.chunks) {
          ws.send(JSON.stringify({ type: "delta", client_msg_id: id, text }));
          await new Promise((r) => setTimeout(r, 10));
        }
        if (!play.hold) ws.send(JSON.stringify({ type: "done", client_msg_id: id, message_id: 900002, status: "complete" }));
      })();
      return;
    }
    // Stop a scripted reply: as the host does, an error frame `cancelled`.
    if (frame.type === "cancel" && scriptedIds.has(frame.client_msg_id)) {
      ws.send(JSON.stringify({ type: "error", client_msg_id: frame.client_msg_id, code: "cancelled",
                               message: "cancelled; what was written so far is kept" }));
      return;
    }
    if (restartNext && frame.type === "send") {
      restartNext = false;
      ws.send(JSON.stringify({ type: "error", client_msg_id: frame.client_msg_id, code: "restarting",
                               message: "the server is restarting" }));
      ws.close({ code: 1012, reason: "the server is restarting; reconnect" });
      return;
    }
    server.send(message);
  });
  sockets.push(ws);
});
let restBlocked = false;
await page.route(/\/api\/v1\/conversations\/\d+\/messages$/, (route) =>
  restBlocked && route.request().method() === "POST" ? route.abort("internetdisconnected") : route.continue());

// A busy host: the first bot listing and the first new conversation are
// answered 503 `overloaded` (as the host does, tested in tests/web.rs); the
// page must wait and send them again, and the user see nothing of it.
// Each try says which it is (Bothost-Attempt), so that a busy host lets in
// first the requests refused longest.
const overloaded = { "GET /api/v1/bots": 1, "POST /api/v1/conversations": 1 };
const tries = { "GET /api/v1/bots": [], "POST /api/v1/conversations": [] };
let refusals = 0;
await page.route(/\/api\/v1\/(bots|conversations)$/, (route) => {
  const key = `${route.request().method()} ${new URL(route.request().url()).pathname}`;
  if (tries[key]) tries[key].push(route.request().headers()["bothost-attempt"]);
  if (!overloaded[key]) return route.continue();
  overloaded[key]--;
  refusals++;
  return route.fulfill({
    status: 503,
    headers: { "Retry-After": "1", "Content-Type": "application/json" },
    body: JSON.stringify({ error: { code: "overloaded", message: "the server is busy; please try again in a moment" } }),
  });
});

try {
  await page.goto(base);
  await page.fill("#username", "browseruser");
  await page.fill("#password", "correct horse battery");
  await page.click("#register");
  await page.waitForSelector('#bots li[data-bot="fast"] .status.ready');
  step("registered; bots listed with live status");

  await page.click('#bots li[data-bot="fast"]');
  await page.waitForSelector("#input:not([disabled])");
  const say = async (text) => { await page.fill("#input", text); await page.press("#input", "Enter"); };
  const reply = (text) => page.locator("li.msg.assistant", { hasText: `You said "${text}"` });
  // A reply is finished when its streaming cursor is gone.
  const finished = (text) => reply(text).and(page.locator(":not(.streaming)"));

  await say("hello browser");
  await page.waitForSelector("li.msg.assistant.streaming");          // tokens arriving
  await finished("hello browser").waitFor();
  if (await page.locator("#login-view").isVisible()) fail("the sign-in form is still shown after signing in");
  await page.locator("#conversations li .conv-title", { hasText: "hello browser" }).waitFor();
  step("chatted; the reply streamed in; the conversation is named after it");
  if (refusals !== 2) fail(`expected 2 overloaded answers to be retried, saw ${refusals}`);
  // The refused first try said 1, and its retry 2 (the page may also have
  // asked again on its own meanwhile: a first try).
  for (const [key, said] of Object.entries(tries)) {
    if (said[0] !== "1" || !said.includes("2")) fail(`${key}: tries said Bothost-Attempt ${JSON.stringify(said)}, expected 1 then a 2`);
  }
  if (await page.locator("#login-error:not(:empty)").count()) fail("an overloaded answer reached the user");
  step("two 503 overloaded answers were waited out and retried unseen, each try counted");
  await page.screenshot({ path: `${shots}/1-chat.png` });

  // The connection drops: the banner shows at once.
  wsBlocked = true;
  for (const ws of sockets.splice(0)) await ws.close();
  await page.waitForSelector("#banner:not([hidden])", { timeout: 1000 });
  step("connection dropped: banner shown");
  await page.screenshot({ path: `${shots}/2-recovering.png` });

  // Meanwhile messages go through the REST fallback.
  await say("sent during the outage");
  await reply("sent during the outage").waitFor({ timeout: 10000 });
  step("reply received through the REST fallback");

  // Now nothing gets through: the message waits, unacknowledged.
  restBlocked = true;
  await say("queued while offline");
  await page.waitForTimeout(500);
  if (await page.locator("li.msg.user.pending", { hasText: "queued while offline" }).count() !== 1)
    fail("the offline message should be shown as pending");
  step("offline message kept as pending");

  // The connection comes back: reconnect (about 5 s, with backoff), resend.
  wsBlocked = false;
  restBlocked = false;
  const back = Date.now();
  await page.waitForSelector("#banner", { state: "hidden", timeout: 30000 });
  await finished("queued while offline").waitFor({ timeout: 10000 });
  step(`reconnected after ${((Date.now() - back) / 1000).toFixed(1)} s; queued message resent and answered`);

  // A host restart: the message is refused as `restarting`, the socket
  // closes with 1012; the page is back within about a second (not the ~5 s
  // of a lost connection) and sends the message again.
  restartNext = true;
  const restarted = Date.now();
  await say("sent as the host restarts");
  // Taken (acknowledged) by the host once the page is back.
  await page.locator("li.msg.user:not(.pending)", { hasText: "sent as the host restarts" })
    .waitFor({ timeout: 10000 });
  const took = Date.now() - restarted;
  if (took > 2500) fail(`after a 1012 close the page took ${took} ms to come back`);
  await finished("sent as the host restarts").waitFor({ timeout: 10000 });
  step(`host restart: back and the message taken again after ${(took / 1000).toFixed(1)} s`);

  // A resend that races the first try is told `in_progress`: the page asks
  // again a moment later instead of leaving the message pending for ever.
  busyNext = { code: "in_progress", message: "this message is still being answered" };
  await say("asked while busy");
  await finished("asked while busy").waitFor({ timeout: 10000 });
  step("a message told in_progress is sent again and answered");

  // The user's replies in flight at their cap: asked to wait a second, the
  // page sends it again, unseen. Asked to wait longer than it retries for
  // (a message rate), it shows the error at once.
  busyNext = { code: "rate_limited", message: "too many replies in flight", retry_after: 1 };
  await say("asked while at the cap");
  await finished("asked while at the cap").waitFor({ timeout: 10000 });
  step("a message told rate_limited for a second is sent again and answered");
  busyNext = { code: "rate_limited", message: "you are sending messages too fast", retry_after: 60 };
  const limited = Date.now();
  await say("sent far too fast");
  await page.locator("li.msg.user", { hasText: "sent far too fast" })
    .locator(".note", { hasText: "too fast" }).waitFor({ timeout: 3000 });
  step(`a message told to wait 60 s shows the error after ${Date.now() - limited} ms`);

  // Text is text: markup in a message is shown, not run.
  await say('<img src=x onerror="window.pwned=1">');
  await finished('<img src=x onerror="window.pwned=1">').waitFor();
  if (await page.locator("#messages img").count() !== 0 || await page.evaluate(() => window.pwned))
    fail("message markup was interpreted as HTML");
  step("markup in messages is shown as text");

  // Nothing twice, on screen or in the store (reload shows the stored history).
  const count = (sel, text) => page.locator(sel, { hasText: text }).count();
  for (const text of ["hello browser", "sent during the outage", "queued while offline",
                      "sent as the host restarts", "asked while busy", "asked while at the cap"]) {
    if (await count("li.msg.user", text) !== 1) fail(`"${text}" shown ${await count("li.msg.user", text)} times`);
  }
  await page.reload();
  await page.click("#conversations li");
  await reply("queued while offline").waitFor();
  const users = await page.locator("li.msg.user").count();
  const bots = await page.locator("li.msg.assistant").count();
  if (users !== 7 || bots !== 7) fail(`stored history has ${users} user and ${bots} bot messages, expected 7 and 7`);
  if (await page.locator("li.msg .note").count() !== 0) fail("a finished reply is stored as cut off or failed");
  step("after a reload the stored history holds each message once");
  await page.screenshot({ path: `${shots}/3-history.png` });

  // Regenerate the last reply: the same bubble streams again, nothing added.
  const lastReply = page.locator("#messages > li.msg.assistant:last-child");
  await lastReply.locator(".act.regen").click();
  await page.waitForSelector("#messages > li.msg.assistant:last-child.streaming");
  await page.waitForSelector("#messages > li.msg.assistant:last-child:not(.streaming)");
  if (await page.locator("li.msg.assistant").count() !== 7) fail("regenerating added a reply instead of replacing it");
  step("regenerated the last reply in place");

  // Edit the last message: it and its reply are replaced.
  answer("edited at the end");
  await page.locator("#messages > li.msg.user").last().locator(".act.edit").click();
  await finished("edited at the end").waitFor();
  await page.reload();
  await page.click("#conversations li");
  await reply("edited at the end").waitFor();
  if (await page.locator("li.msg.user", { hasText: "onerror" }).count() !== 0
      || await page.locator("li.msg.user").count() !== 7 || await page.locator("li.msg.assistant").count() !== 7)
    fail("an edited message should replace the old one and its reply, in the store too");
  step("edited the last message; the store holds the edit and its new reply only");

  // Search one's messages and jump to the conversation.
  await page.fill("#search", "OUTAGE");
  await page.press("#search", "Enter");
  await page.locator("#search-results li", { hasText: "sent during the outage" }).first().waitFor();
  if (await page.locator("#search-results li").count() !== 2) fail("search should find the message and the reply quoting it");
  step("search found the message and its reply");

  // Replies are Markdown, rendered safely and progressively.
  await say("make **this** bold and `that` code");
  // Shown as rendered: the marks are gone from the text.
  const marked = "make this bold and that code";
  await finished(marked).waitFor();
  if (await reply(marked).locator("strong", { hasText: "this" }).count() !== 1
      || await reply(marked).locator("code", { hasText: "that" }).count() !== 1)
    fail("a reply's Markdown was not rendered");
  const chunks = MARKDOWN.match(/[\s\S]{1,7}/g);
  scripted = { content: "show me a plan", chunks, hold: false };
  await say("show me a plan");
  const plan = page.locator("li.msg.assistant", { hasText: "const answer = 42;" }).and(page.locator(":not(.streaming)"));
  await plan.waitFor();
  const checks = {
    "a heading": await plan.locator("h1", { hasText: "Plan" }).count() === 1,
    "a highlighted code block": await plan.locator("pre code.hljs").count() === 1,
    "a copy button": await plan.locator("pre button.copy").count() === 1,
    "a safe link": await plan.locator('a[href="https://example.com/docs"][rel="noopener noreferrer"][target="_blank"]').count() === 1,
    "no javascript: link": await plan.locator('a[href^="javascript"]').count() === 0,
    "a table": await plan.locator("table td", { hasText: "2" }).count() === 1,
    "no script": await page.locator("#messages script").count() === 0,
    "nothing ran": !(await page.evaluate(() => window.pwned)),
  };
  for (const [what, ok] of Object.entries(checks)) if (!ok) fail(`Markdown: ${what} missing`);
  step("Markdown: heading, highlighted code with a copy button, safe links, a table; no script");

  // Stop: a reply that would stream on; the button (or Esc) stops it and
  // what was shown stays.
  scripted = { content: "talk for ever", chunks: ["one ", "two ", "three "], hold: true };
  await say("talk for ever");
  await page.waitForSelector("#stop:not([hidden])");
  await page.locator("li.msg.assistant.streaming", { hasText: "three" }).waitFor();
  await page.keyboard.press("Escape");
  await page.waitForSelector("#stop", { state: "hidden" });
  const stopped = page.locator("li.msg.assistant", { hasText: "one two three" });
  if (await stopped.locator(".note", { hasText: "cancelled" }).count() !== 1)
    fail("a stopped reply should keep its text and say it was cancelled");
  step("Esc stopped a streaming reply; its text stays");

  // Rename and delete conversations.
  answer("Trip plans");
  await page.click('#conversations li.active button[aria-label="Rename"]');
  await page.locator("#conversations li .conv-title", { hasText: "Trip plans" }).waitFor();
  if (!(await page.textContent("#chat-title")).includes("Trip plans")) fail("the open conversation's title did not change");
  await page.click('#bots li[data-bot="fast"]');
  await page.waitForFunction(() => document.querySelectorAll("#conversations li").length === 2);
  answer(undefined);
  await page.click('#conversations li.active button[aria-label="Delete"]');
  await page.waitForFunction(() => document.querySelectorAll("#conversations li").length === 1);
  await page.reload();
  await page.locator("#conversations li .conv-title", { hasText: "Trip plans" }).waitFor();
  if (await page.locator("#conversations li").count() !== 1) fail("a deleted conversation came back after a reload");
  step("renamed a conversation and deleted another; both survive a reload");

  // Stop a real reply mid-stream: what was shown is what is stored.
  await page.click("#conversations li");
  await reply("hello browser").waitFor();
  await say("please stop me halfway through");
  const live = page.locator("li.msg.assistant.streaming");
  await live.waitFor();
  await page.waitForFunction(() => {
    const r = document.querySelector("li.msg.assistant.streaming .text");
    return r && r.textContent.length > 30;
  });
  await page.keyboard.press("Escape");
  await page.waitForSelector("#stop", { state: "hidden" });
  await page.waitForTimeout(300);   // any delta already on its way lands
  const shownText = await page.evaluate(() => [...document.querySelectorAll("li.msg.assistant")].pop().querySelector(".text").textContent);
  if (shownText.includes("same way every time")) fail("the reply finished before it could be stopped");
  await page.reload();
  await page.click("#conversations li");
  await reply("hello browser").waitFor();
  const storedText = await page.evaluate(() => [...document.querySelectorAll("li.msg.assistant")].pop().querySelector(".text").textContent);
  if (storedText !== shownText) fail(`stopped: shown ${JSON.stringify(shownText)}, stored ${JSON.stringify(storedText)}`);
  if (await page.locator("li.msg.assistant").last().locator(".note", { hasText: "cut off" }).count() !== 1)
    fail("a stopped reply is stored as cut off");
  step("stopped a real reply mid-stream; after a reload it is stored cut off, exactly as shown");

  // Export: a file with the conversation in it.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export-md")]);
  const file = await download.path();
  const { readFileSync } = await import("node:fs");
  const exported = readFileSync(file, "utf8");
  if (!exported.startsWith("# Trip plans") || !exported.includes("hello browser")) fail(`the export is not the conversation: ${exported.slice(0, 200)}`);
  step(`export downloaded ${download.suggestedFilename()} with the conversation`);

  // Log out everywhere: a second browser's session ends too.
  const other = await browser.newContext();
  const second = await other.newPage();
  await second.goto(base);
  await second.fill("#username", "browseruser");
  await second.fill("#password", "correct horse battery");
  await second.click("#login");
  await second.waitForSelector("#chat-view:not([hidden])");
  answer(undefined);
  await page.click("#logout-all");
  await page.waitForSelector("#login-view:not([hidden])");
  await second.reload();
  await second.waitForSelector("#login-view:not([hidden])", { timeout: 10000 });
  await other.close();
  step("log out everywhere ended the other browser's session");

  // Change the password: the old one stops working.
  await page.fill("#username", "browseruser");
  await page.fill("#password", "correct horse battery");
  await page.click("#login");
  await page.waitForSelector("#chat-view:not([hidden])");
  answer("correct horse battery", "a much newer secret", undefined);
  await page.click("#change-password");
  await page.waitForFunction(() => localStorage.getItem("bothost.token"));
  await page.waitForTimeout(200);
  await page.click("#logout");
  await page.fill("#username", "browseruser");
  await page.fill("#password", "correct horse battery");
  await page.click("#login");
  await page.locator("#login-error", { hasText: "wrong username or password" }).waitFor();
  await page.fill("#password", "a much newer secret");
  await page.click("#login");
  await page.waitForSelector("#chat-view:not([hidden])");
  step("changed the password: the old one fails, the new one works");

  // A phone, and the dark theme.
  await page.setViewportSize({ width: 375, height: 720 });
  await page.click("#conversations li");
  await reply("hello browser").waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  if (overflow > 375) fail(`the page is ${overflow} px wide on a 375 px phone`);
  await page.emulateMedia({ colorScheme: "dark" });
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  if (bg !== "rgb(21, 23, 28)") fail(`the dark theme is not applied (${bg})`);
  await page.screenshot({ path: `${shots}/4-phone-dark.png` });
  step("fits a 375 px phone; follows the dark color scheme");

  // An admin sees the bots and the users, and can disable one.
  await page.setViewportSize({ width: 1280, height: 720 });
  await page.emulateMedia({ colorScheme: "light" });
  await page.click("#logout");
  await page.fill("#username", "root");
  await page.fill("#password", "correct horse battery");
  await page.click("#login");
  await page.locator("#admin-bots li", { hasText: "fast: ready" }).waitFor();
  if (await page.locator("#messages li, #search-results li").count() !== 0)
    fail("the previous user's messages are still on the page after logging out");
  if (await page.locator("#admin-bots li").count() !== 5) fail("the admin section should list the five bots");
  const victim = page.locator("#admin-users li", { hasText: "browseruser" });
  await victim.locator("button", { hasText: "Disable" }).click();
  await page.locator("#admin-users li", { hasText: "browseruser (user, disabled)" }).waitFor();
  await page.screenshot({ path: `${shots}/5-admin.png` });
  step("an admin sees five bots and the users, and disabled a user");
  if (unexpected.length) fail(`unexpected: ${unexpected.join("; ")}`);
} catch (e) {
  await page.screenshot({ path: `${shots}/failure.png` }).catch(() => {});
  console.error("FAILED:", e.message);
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log("browser test passed");
