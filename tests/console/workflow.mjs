// The console's whole forwarding workflow in a real browser (Debian's chromium driven by
// playwright-core), against a running sluice. Launched by tests/tests/e2e/console.rs:
//
//   node workflow.mjs BASE_URL KEY_ID SECRET SCREENSHOT_DIR
//
// It prints `READY` once the rule runs and the live tail follows it, then waits for a line on
// stdin (the Rust side has published device messages over MQTT), checks they show up in the live
// tail and on the queue page, and prints `ALL OK`. Any failure exits non-zero with the reason.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import assert from 'node:assert/strict';

const [base, keyId, secret, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const stdin = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once('line', resolve));
const step = (s) => console.error(`-- ${s}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  context.setDefaultTimeout(20000);
  const page = await context.newPage();
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  step('the root redirects to the sign-in page; a page without a session does too');
  await page.goto(`${base}/`);
  assert.match(page.url(), /\/console\/login$/);
  await page.goto(`${base}/console/rules`);
  assert.match(page.url(), /\/console\/login$/);
  await shot('01-sign-in');

  step('a wrong secret is refused');
  await page.getByLabel('Access key id').fill(keyId);
  await page.getByLabel('Secret').fill('wrong');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').waitFor();

  step('sign in with the admin key: HttpOnly, SameSite=Strict session cookie');
  await page.getByLabel('Access key id').fill(keyId);
  await page.getByLabel('Secret').fill(secret);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(/\/console\/$/);
  const cookie = (await context.cookies()).find((c) => c.name === 'sluice_session');
  assert.ok(cookie, 'session cookie set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, '/');

  step('a state-changing request without the CSRF token is refused');
  const csrfless = await page.evaluate(async () => {
    const r = await fetch('/v1/topics/csrf-probe', { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    return { status: r.status, body: await r.json() };
  });
  assert.equal(csrfless.status, 403);
  assert.equal(csrfless.body.error.code, 'InvalidCsrfToken');

  step('create topic hot');
  await page.getByRole('link', { name: 'Topics' }).click();
  await page.waitForURL(/\/console\/topics$/);
  await page.getByLabel('Topic name').fill('hot');
  await page.getByRole('button', { name: 'Create topic' }).click();
  await page.locator('section.topic', { hasText: 'hot' }).first().waitFor();

  step('create queue hot-q (the queue list shows its empty counts)');
  await page.getByRole('link', { name: 'Queues' }).click();
  await page.getByLabel('Queue name').fill('hot-q');
  await page.getByRole('button', { name: 'Create queue' }).click();
  await page.locator('[data-active="hot-q"]').waitFor();
  assert.equal(await page.locator('[data-active="hot-q"]').textContent(), '0');

  step('subscribe hot-q to hot');
  await page.getByRole('link', { name: 'Topics' }).click();
  await page.getByLabel('Topic', { exact: true }).selectOption('hot');
  await page.getByLabel('Subscription name').fill('hot-to-q');
  await page.getByLabel('Endpoint type').selectOption('queue');
  await page.getByLabel('Queue name or URL').fill('hot-q');
  await page.getByRole('button', { name: 'Subscribe', exact: true }).click();
  await page.locator('section[aria-label="Topic hot"] td', { hasText: 'queue hot-q' }).waitFor();
  await shot('03-topics');

  step('rules: SQL typed into the editor, a compile error at line and column');
  await page.getByRole('link', { name: 'Rules' }).click();
  await page.waitForURL(/\/console\/rules$/);
  await page.getByLabel('Name', { exact: true }).fill('hot-rule');
  const sql = page.getByLabel('SQL', { exact: true });
  await sql.pressSequentially('SELECT deviceName() AS device, temperature\nFROM "/pk/+/user/temp"\nWHERE temperature >> 30');
  await page.getByLabel('Sample topic').fill('/pk/dev1/user/temp');
  await page.getByLabel('Sample payload').fill('{"temperature": 42}');
  await page.getByRole('button', { name: 'Run test' }).click();
  const sqlError = page.locator('#sql-error');
  await sqlError.waitFor({ state: 'visible' });
  assert.match(await sqlError.textContent(), /^Line 3, column \d+:/);

  step('fix the SQL; the live test shows the decision');
  await sql.fill('');
  await sql.pressSequentially('SELECT deviceName() AS device, temperature\nFROM "/pk/+/user/temp"\nWHERE temperature > 30');
  await page.getByLabel('Actions, one per line').fill('forward:hot');
  await page.getByRole('button', { name: 'Run test' }).click();
  await page.locator('#test-outcome[data-outcome="emitted"]').waitFor();
  assert.equal(await sqlError.isHidden(), true);
  const decision = await page.locator('li.decision').first().textContent();
  assert.match(decision, /forward → hot/);
  assert.match(decision, /device: "dev1"/);
  assert.match(decision, /temperature: 42/);
  step('a cold sample is dropped');
  await page.getByLabel('Sample payload').fill('{"temperature": 12}');
  await page.getByRole('button', { name: 'Run test' }).click();
  await page.locator('#test-outcome[data-outcome="dropped"]').waitFor();

  step('create the rule (stopped) and start it');
  await page.getByRole('button', { name: 'Create (stopped)' }).click();
  await page.locator('[data-rule-state="hot-rule"]', { hasText: 'stopped' }).waitFor();
  await page.getByRole('button', { name: 'Start rule hot-rule' }).click();
  await page.locator('[data-rule-state="hot-rule"]', { hasText: 'running' }).waitFor();
  await page.getByRole('button', { name: 'Edit rule hot-rule' }).click();
  await page.locator('#rule-charts figure').first().waitFor();
  await shot('02-rules');

  step('live tail follows the rule output');
  await page.getByRole('link', { name: 'Live tail' }).click();
  await page.getByLabel('Follow').selectOption('rule');
  await page.getByLabel('Topic filter, rule or queue').fill('hot-rule');
  await page.getByLabel('Keep at most (rows)').fill('50');
  await page.getByRole('button', { name: 'Follow', exact: true }).click();
  await page.locator('#tail-status', { hasText: 'Following rule hot-rule' }).waitFor();

  console.log('READY');
  await nextLine();

  step('the device messages appear in the live tail');
  await page.locator('.tail-row').nth(1).waitFor();
  const rows = await page.locator('.tail-row').allTextContents();
  assert.equal(rows.length, 2, `two hot messages forwarded, got ${JSON.stringify(rows)}`);
  assert.ok(rows.some((r) => /temperature: 45/.test(r)), 'temperature 45 in the tail');
  assert.ok(rows.some((r) => /temperature: 50/.test(r)), 'temperature 50 in the tail');
  assert.ok(rows.every((r) => /hot/.test(r) && /by rule hot-rule/.test(r)));
  step('pause holds new rows');
  await page.getByRole('button', { name: 'Pause' }).click();
  assert.equal(await page.getByRole('button', { name: 'Resume' }).getAttribute('aria-pressed'), 'true');
  await shot('04-tail');
  await page.getByRole('button', { name: 'Resume' }).click();

  step('the queue page counts them and peek shows them');
  await page.getByRole('link', { name: 'Queues' }).click();
  await page.locator('[data-active="hot-q"]', { hasText: /^2$/ }).waitFor();
  await page.getByLabel('Queue', { exact: true }).selectOption('hot-q');
  await page.getByRole('button', { name: 'Peek', exact: true }).click();
  await page.locator('#peek-output tbody tr').nth(1).waitFor();
  const peeked = await page.locator('#peek-output').textContent();
  assert.match(peeked, /dev1/);
  assert.match(peeked, /dev2/);
  await shot('05-queues');

  step('overview, devices and keys pages render; a new key secret is shown once');
  await page.getByRole('link', { name: 'Overview' }).click();
  await page.locator('.card').first().waitFor();
  await page.locator('#charts figure').first().waitFor();
  await shot('00-overview');
  await page.getByRole('link', { name: 'Devices' }).click();
  await page.locator('#devices-list > *').first().waitFor();
  await shot('06-devices');
  await page.getByRole('link', { name: 'Access keys' }).click();
  await page.getByLabel('Name', { exact: true }).fill('hot-app');
  await page.getByLabel('Grants, one per line').fill('queues/hot-q:consume');
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.locator('#key-secret code').waitFor();
  await page.locator('#keys-list td', { hasText: 'hot-app' }).waitFor();
  await shot('07-keys');

  step('a narrow window stays readable');
  await page.setViewportSize({ width: 390, height: 800 });
  await page.getByRole('link', { name: 'Rules' }).click();
  await page.locator('[data-rule-state="hot-rule"]').waitFor();
  await shot('08-rules-narrow');
  await page.setViewportSize({ width: 1280, height: 800 });

  step('keyboard: the skip link is the first stop and reaches the content');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');

  step('sign out ends the session');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(/\/console\/login$/);
  await page.goto(`${base}/console/`);
  assert.match(page.url(), /\/console\/login$/);

  assert.deepEqual(consoleErrors.filter((e) => !/401|403|Failed to load resource/.test(e)), [], 'no script errors');
  console.log('ALL OK');
} finally {
  await browser.close();
  stdin.close();
}
