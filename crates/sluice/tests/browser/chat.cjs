// Two users chat in the web client: a message appears on the other side, the unread badge
// rises and clears when the room is opened, typing and presence show, an error is shown
// where it belongs, and after a network drop the client reconnects and shows every message
// exactly once, in order.
"use strict";

const { URL, launch, page, proxy, check, screenshot, run } = require("./lib.cjs");

/** Signs `user` in with the development sign-in and waits for the socket. */
async function signIn(p, user) {
  await p.goto("/");
  await p.getByLabel("User name").fill(user);
  await p.getByRole("button", { name: "Sign in", exact: true }).click();
  await p.locator("#conn", { hasText: /^connected$/ }).waitFor();
}

/** The bodies of the messages a page shows, in the order shown, with their seqs. */
async function shown(p) {
  return p.$$eval("#messages li[data-seq]", (lis) => lis.map((li) => ({ seq: Number(li.dataset.seq), body: li.querySelector(".body").textContent })));
}

async function send(p, body) {
  await p.getByRole("textbox", { name: "Message" }).fill(body);
  await p.getByRole("textbox", { name: "Message" }).press("Enter");
}

run(async () => {
  const browser = await launch();
  // Alice reaches the server through a proxy that the test can cut.
  const net = await proxy(URL);
  const alice = await page(browser, net.url, "alice");
  const bob = await page(browser, URL, "bob");
  await signIn(alice, "alice");
  await signIn(bob, "bob");

  // Alice starts a direct chat with bob.
  await alice.getByLabel("Direct chat with").fill("bob");
  await alice.getByLabel("Direct chat with").press("Enter");
  await alice.locator("#room-title", { hasText: "bob" }).waitFor();
  await send(alice, "hello bob");
  await alice.locator('#messages li[data-seq="1"] .state', { hasText: "sent" }).waitFor();
  check(true, "alice's message is acked (pending -> sent)");

  // Bob has no room open: the room appears with an unread badge, and the total rises.
  const bobRoom = bob.locator('#room-list li[data-room="dm:alice:bob"]');
  await bobRoom.locator(".badge", { hasText: "1" }).waitFor();
  await bob.locator("#total", { hasText: "1" }).waitFor();
  check(true, "bob's unread badge and total rise to 1");
  await bobRoom.click();
  await bob.locator('#messages li[data-seq="1"] .body', { hasText: "hello bob" }).waitFor();
  await bobRoom.locator(".badge").waitFor({ state: "hidden" });
  await bob.locator("#total").waitFor({ state: "hidden" });
  check(true, "opening the room shows the message and clears bob's badge and total");

  // Presence and typing.
  await alice.locator("#presence", { hasText: "bob is online" }).waitFor({ timeout: 20000 });
  await bob.getByRole("textbox", { name: "Message" }).pressSequentially("typing…", { delay: 20 });
  await alice.locator("#typing", { hasText: "bob is typing" }).waitFor();
  check(true, "alice sees bob online and typing");
  await bob.getByRole("textbox", { name: "Message" }).fill("");
  await send(bob, "hi alice");
  await alice.locator('#messages li[data-seq="2"] .body', { hasText: "hi alice" }).waitFor();
  check(true, "bob's reply reaches alice live");

  // A body over the server's limit fails where it was sent, with the reason.
  await alice.getByRole("textbox", { name: "Message" }).evaluate((t) => {
    t.removeAttribute("maxlength");
    t.value = "x".repeat(70000);
  });
  await alice.getByRole("textbox", { name: "Message" }).press("Enter");
  await alice.locator("#messages li.failed .state", { hasText: "too large" }).waitFor();
  check(true, "a too-large message shows as failed with its reason");
  await alice.locator("#messages li.failed").getByRole("button", { name: "Discard" }).click();
  await alice.locator("#messages li.failed").waitFor({ state: "detached" });

  // The network drops under alice: bob sends while she is away, and she writes one too.
  net.drop();
  await alice.locator("#conn", { hasText: "offline" }).waitFor();
  for (const body of ["while you were away 1", "while you were away 2", "while you were away 3"]) await send(bob, body);
  await bob.locator('#messages li[data-seq="5"]').waitFor();
  await send(alice, "sent while offline");
  await alice.locator("#messages li.pending", { hasText: "sent while offline" }).waitFor();
  check(true, "alice is offline; her message waits as pending");
  await alice.waitForTimeout(1500);
  net.restore();
  await alice.locator("#conn", { hasText: /^connected$/ }).waitFor({ timeout: 30000 });
  await alice.locator('#messages li[data-seq="6"] .body', { hasText: "sent while offline" }).waitFor();
  await alice.locator("#messages li.pending").waitFor({ state: "detached" });
  const got = await shown(alice);
  const want = ["hello bob", "hi alice", "while you were away 1", "while you were away 2", "while you were away 3", "sent while offline"];
  check(JSON.stringify(got.map((m) => m.body)) === JSON.stringify(want), "after the reconnect alice shows every message exactly once, in order: " + JSON.stringify(got));
  check(got.every((m, i) => m.seq === i + 1), "seqs 1..6 without a gap or a repeat");
  await bob.locator('#messages li[data-seq="6"] .body', { hasText: "sent while offline" }).waitFor();
  check((await shown(bob)).length === 6, "bob shows the six messages once each");

  // Scroll-back: a room with a long history opens at its newest page and loads older
  // pages as alice scrolls up, each message once.
  const LONG = Number(process.env.SLUICE_LONG_ROOM_MESSAGES);
  await alice.locator('#room-list li[data-room="lobby"]').click();
  await alice.locator(`#messages li[data-seq="${LONG}"]`).waitFor();
  check((await shown(alice)).length === 50, "the long room opens at its newest 50 messages");
  for (let pages = 0; pages < 10 && (await alice.locator("#messages li[data-seq='1']").count()) === 0; pages++) {
    const before = (await shown(alice)).length;
    await alice.locator("#messages").evaluate((m) => {
      m.scrollTop = 0;
      m.dispatchEvent(new Event("scroll"));
    });
    await alice.waitForFunction((n) => document.querySelectorAll("#messages li[data-seq]").length > n, before);
  }
  const all = await shown(alice);
  check(all.length === LONG && all.every((m, i) => m.seq === i + 1), "scrolling up loads every older page once: " + all.length + " messages");
  check((await alice.locator("#messages button.older").count()) === 0, "no older page is offered past the first message");

  await alice.locator('#room-list li[data-room="dm:alice:bob"]').click();
  await alice.getByRole("textbox", { name: "Message" }).fill("");
  await screenshot(alice, "chat.png");
  await browser.close();
  net.close();
});
