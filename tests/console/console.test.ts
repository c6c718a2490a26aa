import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConsole } from '../../scripts/build-console.ts';
import { startLocalUpstash, type LocalUpstash } from '../../scripts/local-upstash.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, stack, type Customer } from '../support/supabase.ts';

// The console in a real browser: Debian's chromium (installed by .ci/run),
// driven by playwright-core. Without it the test is skipped on a workstation,
// never in CI (the summary reporter fails skipped tests there).

const chromiumPath = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((path) => existsSync(path));
const available = chromiumPath !== undefined || process.env.CI === 'true';

let fake: FakeUpstream;
let upstash: LocalUpstash;
let gateway: Gateway;
let browser: Browser;

beforeAll(async () => {
  if (!available) return;
  await buildConsole();
  fake = await startFakeUpstream();
  // With Redis, as deployed: holds are taken ahead, and revoking on the page must reach them.
  upstash = await startLocalUpstash();
  gateway = await startGateway(
    { OPENAI_BASE_URL: `${fake.url}/v1`, SUPABASE_ANON_KEY: stack.anonKey, UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstash.token },
    { publicFiles: true },
  );
  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox'] });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await gateway?.close();
  await upstash?.stop();
  await fake?.close();
});

async function accountOf(customer: Customer) {
  const { rows: [account] } = await admin().query('select balance::bigint as balance, held::bigint as held, low_balance_threshold::bigint as threshold from public.accounts where id = $1', [customer.accountId]);
  return { balance: Number(account.balance), held: Number(account.held), threshold: Number(account.threshold) };
}

/** Signs in on the page the way a customer does: email, then the code from the (stand-in's) mail. */
async function signIn(page: Page, email: string) {
  await page.goto(`${gateway.url}/console/`);
  await page.fill('#email', email);
  await page.click('#ask-code button');
  await page.waitForSelector('#enter-code:not([hidden])');
  const mail = (await (await fetch(`${stack.supabaseUrl}/auth/v1/local/outbox?email=${encodeURIComponent(email)}`)).json()) as Array<{ code: string }>;
  await page.fill('#code', mail.at(-1)!.code);
  await page.click('#enter-code button');
  await page.waitForSelector('#signed-in-as');
}

/** The sign-in mail the (stand-in's) outbox holds last for `email`. */
async function lastMail(email: string) {
  const mail = (await (await fetch(`${stack.supabaseUrl}/auth/v1/local/outbox?email=${encodeURIComponent(email)}`)).json()) as Array<{ code: string; link: string }>;
  return mail.at(-1)!;
}

/** Asks for a sign-in mail on the page, as a customer does, and returns it. */
async function requestMail(page: Page, email: string) {
  await page.goto(`${gateway.url}/console/`);
  await page.fill('#email', email);
  await page.click('#ask-code button');
  await page.waitForSelector('#enter-code:not([hidden])');
  return lastMail(email);
}

/** The session supabase-js keeps in the page's localStorage: whose, and its token. */
async function storedSession(page: Page) {
  return page.evaluate(() => {
    const stored = Object.keys(localStorage).find((name) => name.startsWith('sb-') && name.endsWith('-auth-token'));
    if (!stored) return null;
    const session = JSON.parse(localStorage.getItem(stored)!) as { access_token: string; user: { id: string } };
    return { userId: session.user.id, accessToken: session.access_token };
  });
}

/** Waits until the page has dealt with a sign-in link it was opened with: the address clean, a page shown, nothing loading. */
async function settle(page: Page) {
  await page.waitForFunction(() => !/[?&#](code|access_token|error)=/.test(location.href));
  await page.waitForSelector('#signed-in-as, #ask-code');
  await page.waitForLoadState('networkidle');
}

/** Everything the page reports as an error, Content-Security-Policy violations included. */
async function watchErrors(page: Page) {
  const errors: string[] = [];
  page.on('console', (message) => void (message.type() === 'error' && errors.push(message.text())));
  page.on('pageerror', (error) => void errors.push(error.message));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || 'inline'}`));
  });
  return errors;
}

/** Screenshots of each page, kept as test artifacts in artifacts/console/ (not committed). */
const artifacts = join(import.meta.dirname, '../../artifacts/console');
async function screenshot(page: Page, name: string) {
  await mkdir(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

const figure = async (page: Page, name: string) => Number(await page.getAttribute(`[data-figure="${name}"] [data-micro]`, 'data-micro'));

describe.skipIf(!available)('the customer console', () => {
  it('signs in with an emailed code and shows the numbers the database has', { timeout: 60_000 }, async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 12_345_678 });
    // One request, so the page has usage to show.
    const answered = await gateway.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }] });
    expect(answered.choices[0]?.message.content).toBeTruthy();
    await gateway.settled();

    const page = await browser.newPage();
    try {
      await signIn(page, `${customer.userId}@example.test`);
      expect(await page.textContent('#signed-in-as')).toBe(`${customer.userId}@example.test`);
      await page.waitForSelector('[data-figure="balance"]');
      const books = await accountOf(customer);
      expect(await figure(page, 'balance')).toBe(books.balance);
      expect(await figure(page, 'held')).toBe(books.held);
      expect(await figure(page, 'available')).toBe(books.balance - books.held);
      // Dollars on the page, the exact micro-units on hover.
      expect(await page.textContent('[data-figure="balance"] strong')).toBe(`$${(books.balance / 1_000_000).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 6 })}`);
      expect(await page.getAttribute('[data-figure="balance"] [data-micro]', 'title')).toBe(`${books.balance.toLocaleString('en-US')} micro-USD`);
      // The request is listed with its tokens, cost, source and outcome; the chart is drawn.
      await page.waitForSelector('#recent table');
      const row = await page.textContent('#recent tbody tr');
      expect(row).toContain(model);
      expect(row).toContain('$0.000055');
      expect(row).toContain('provider');
      expect(row).toContain('completed');
      await page.waitForSelector('#usage-chart canvas');
      await screenshot(page, 'customer');

      // The operator's data is not reachable from the customer's session, even by calling the functions the operator page calls.
      const attempts = await page.evaluate(async ({ supabaseUrl, anonKey }) => {
        const stored = Object.keys(localStorage).find((name) => name.startsWith('sb-') && name.endsWith('-auth-token'))!;
        const token = (JSON.parse(localStorage.getItem(stored)!) as { access_token: string }).access_token;
        const headers = { apikey: anonKey, authorization: `Bearer ${token}`, 'content-type': 'application/json' };
        const results: Record<string, unknown> = {};
        for (const name of ['operator_customers', 'operator_revenue', 'operator_models', 'operator_payments', 'operator_alerts']) {
          const response = await fetch(`${supabaseUrl}/rest/v1/rpc/${name}`, { method: 'POST', headers, body: '{}' });
          results[name] = [response.status, ((await response.json()) as { code?: string }).code];
        }
        const audit = await fetch(`${supabaseUrl}/rest/v1/audit_log?select=id`, { headers });
        results.audit_log = [audit.status, await audit.json()];
        const costs = await fetch(`${supabaseUrl}/rest/v1/usage_events?select=upstream_cost`, { headers });
        results.upstream_cost = [costs.status, ((await costs.json()) as { code?: string }).code];
        return results;
      }, { supabaseUrl: stack.supabaseUrl, anonKey: stack.anonKey });
      expect(attempts).toEqual({
        operator_customers: [403, '42501'], operator_revenue: [403, '42501'], operator_models: [403, '42501'],
        operator_payments: [403, '42501'], operator_alerts: [403, '42501'],
        audit_log: [200, []],
        upstream_cost: [403, '42501'],
      });
    } finally {
      await page.close();
    }
  });

  it('a key created on the page, used against the gateway, makes the balance on the page fall; revoked on the page with a hold taken ahead for it, it is refused at once', { timeout: 60_000 }, async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 5_000_000 });
    const page = await browser.newPage();
    try {
      await signIn(page, `${customer.userId}@example.test`);
      await page.waitForSelector('#new-key-name');
      await page.fill('#new-key-name', 'from the console');
      await page.click('#keys form button');
      const key = (await (await page.waitForSelector('[data-new-key]')).textContent())!;
      expect(key).toMatch(/^tg_/);
      const before = await figure(page, 'balance');

      // Twice, as an agent does: the gateway takes the key's next hold ahead.
      for (let index = 0; index < 2; index++) {
        const answered = await gateway.openai(key).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }] });
        expect(answered.usage).toMatchObject({ prompt_tokens: 19, completion_tokens: 9 });
        await gateway.settled();
      }
      await page.click('#refresh');
      // 19 prompt tokens at $1/M + 9 completion tokens at $4/M = 55 micro-dollars, twice.
      await expect.poll(() => figure(page, 'balance')).toBe(before - 110);
      expect((await accountOf(customer)).balance).toBe(before - 110);
      const { rows: ready } = await admin().query(`select 1 from public.usage_events where account_id = $1 and status = 'held' and ready_until is not null`, [customer.accountId]);
      expect(ready).toHaveLength(1);

      page.once('dialog', (dialog) => void dialog.accept());
      const { rows: [created] } = await admin().query(`select id from public.api_keys where account_id = $1 and name = 'from the console'`, [customer.accountId]);
      await page.click(`[data-revoke="${created.id}"]`);
      await expect.poll(async () => (await admin().query('select revoked_at from public.api_keys where id = $1', [created.id])).rows[0].revoked_at).not.toBeNull();
      await expect(gateway.openai(key).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }] })).rejects.toMatchObject({ status: 401 });
    } finally {
      await page.close();
    }
  });

  it('changes the low-balance threshold, refuses a wrong code in words, and fits a phone', { timeout: 60_000 }, async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
    try {
      await page.goto(`${gateway.url}/console/`);
      await page.fill('#email', `${customer.userId}@example.test`);
      await page.click('#ask-code button');
      await page.waitForSelector('#enter-code:not([hidden])');
      await page.fill('#code', '000000x');
      await page.click('#enter-code button');
      await expect.poll(() => page.textContent('#sign-in-message')).toContain('That code did not work');
      await screenshot(page, 'sign-in-phone');

      await signIn(page, `${customer.userId}@example.test`);
      await page.waitForSelector('#threshold');
      await page.fill('#threshold', '2.50');
      await page.click('#balance form button');
      await expect.poll(async () => (await accountOf(customer)).threshold).toBe(2_500_000);
      // Nothing wider than the phone's screen but the tables, which scroll inside their section.
      expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
      await screenshot(page, 'customer-phone');
    } finally {
      await page.close();
    }
  });
});

describe.skipIf(!available)('the operator console', () => {
  it('an operator (app_metadata.role admin) edits a price, grants credits, sees revenue, and every action is in the audit log on the page', { timeout: 90_000 }, async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic', cost: { input: 500_000, output: 2_000_000 } });
    const customer = await createCustomer({ balance: 2_000_000 });
    await gateway.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }] });
    await gateway.settled();
    const email = `operator-${crypto.randomUUID().slice(0, 8)}@example.test`;
    const { createAuthUser } = await import('../../scripts/local-supabase/index.ts');
    const operatorId = await createAuthUser(stack.authAdminDatabaseUrl, email);
    await admin().query(`update auth.users set raw_app_meta_data = raw_app_meta_data || '{"role":"admin"}' where id = $1`, [operatorId]);

    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    const answers: string[] = [];
    page.on('dialog', (dialog) => void (dialog.type() === 'prompt' ? dialog.accept(answers.shift() ?? '') : dialog.accept()));
    try {
      await signIn(page, email);
      await page.waitForSelector(`[data-edit-model="${model}"]`);

      // Revenue of this model: what the customer was charged, what it cost, the difference.
      const { rows: [books] } = await admin().query('select sum(charged)::int as revenue, sum(upstream_cost)::int as cost from public.usage_events where model_id = $1', [model]);
      const revenueRow = page.locator('#revenue tbody tr', { hasText: model });
      await expect.poll(() => revenueRow.count()).toBe(1);
      expect(await revenueRow.locator('[data-micro]').evaluateAll((cells) => cells.map((cell) => Number((cell as HTMLElement).dataset.micro)))).toEqual([books.revenue, books.cost, books.revenue - books.cost]);
      await page.waitForSelector('#revenue canvas');

      answers.push('2.5', '10');
      await page.click(`[data-edit-model="${model}"]`);
      await expect.poll(async () => (await admin().query('select price_input::int, price_output::int from public.models where id = $1', [model])).rows[0]).toEqual({ price_input: 2_500_000, price_output: 10_000_000 });
      // Requests are billed at the new price: 19 prompt tokens at $2.50/M + 9 completion tokens at $10/M = 137.5, so 138;
      // except one that adopts a hold taken ahead before the change, served on that hold's terms (55; README, "Holds taken ahead").
      const { rows: readyBefore } = await admin().query(`select 1 from public.usage_events where account_id = $1 and status = 'held' and ready_until is not null`, [customer.accountId]);
      const charged = [];
      for (let index = 0; index < 2; index++) {
        const { response } = await gateway.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }] }).withResponse();
        await gateway.settled();
        const { rows: [row] } = await admin().query('select charged::int from public.usage_events where request_id = $1', [response.headers.get('x-request-id')]);
        charged.push(row.charged);
      }
      expect(charged).toEqual(readyBefore.length ? [55, 138] : [138, 138]);

      answers.push(`${model}-latest`);
      await page.click(`[data-alias-model="${model}"]`);
      await expect.poll(async () => (await admin().query('select model_id from public.model_aliases where alias = $1', [`${model}-latest`])).rows).toEqual([{ model_id: model }]);

      await page.fill('#customer-search', `${customer.userId}@example.test`);
      await page.click('#customers form button');
      await page.waitForSelector(`[data-grant="${customer.accountId}"]`);
      const before = Number((await admin().query('select balance from public.accounts where id = $1', [customer.accountId])).rows[0].balance);
      answers.push('3.25', 'goodwill');
      await page.click(`[data-grant="${customer.accountId}"]`);
      await expect.poll(async () => Number((await admin().query('select balance from public.accounts where id = $1', [customer.accountId])).rows[0].balance)).toBe(before + 3_250_000);

      await expect.poll(() => page.textContent('#audit')).toContain('grant_credits');
      const auditText = (await page.textContent('#audit'))!;
      expect(auditText).toContain('update_model');
      expect(auditText).toContain(email);
      const { rows: logged } = await admin().query(`select action from public.audit_log where actor_email = $1 and action not like 'ledger\\_%' order by id`, [email]);
      expect(logged.map((row) => row.action)).toEqual(['update_model', 'set_alias', 'grant_credits']);
      await screenshot(page, 'operator');
    } finally {
      await page.close();
    }
  });
});

describe.skipIf(!available)('codes on the console', () => {
  it('an operator creates a code on the page; a customer redeems it on theirs and sees the grant and the balance rise', { timeout: 90_000 }, async () => {
    const email = `codes-${crypto.randomUUID().slice(0, 8)}@example.test`;
    const { createAuthUser } = await import('../../scripts/local-supabase/index.ts');
    const operatorId = await createAuthUser(stack.authAdminDatabaseUrl, email);
    await admin().query(`update auth.users set raw_app_meta_data = raw_app_meta_data || '{"role":"admin"}' where id = $1`, [operatorId]);
    const code = `PAGE-${crypto.randomUUID().slice(0, 6).toUpperCase()}`;

    const operatorPage = await browser.newPage();
    try {
      await signIn(operatorPage, email);
      await operatorPage.waitForSelector('#create-code');
      await operatorPage.fill('#code-name', code.toLowerCase());
      await operatorPage.fill('#code-dollars', '1.50');
      await operatorPage.fill('#code-uses', '3');
      await operatorPage.fill('#code-days', '30');
      await operatorPage.click('#create-code button');
      await expect.poll(() => operatorPage.textContent('#code-message')).toBe(`Created ${code}.`);
    } finally {
      await operatorPage.close();
    }
    const { rows: [created] } = await admin().query('select credits::int, max_uses, grant_lifetime::text from public.redemption_codes where code = $1', [code]);
    expect(created).toEqual({ credits: 1_500_000, max_uses: 3, grant_lifetime: '30 days' });

    const customer = await createCustomer({ balance: 1_000_000 });
    const page = await browser.newPage();
    try {
      await signIn(page, `${customer.userId}@example.test`);
      await page.waitForSelector('#redeem-code');
      await page.fill('#redeem-code', 'NOPE-0000');
      await page.click('#credits form button');
      await expect.poll(() => page.textContent('#redeem-message')).toBe('There is no such code.');
      await page.fill('#redeem-code', code);
      await page.click('#credits form button');
      await expect.poll(() => page.textContent('#redeem-message')).toContain('Redeemed: $1.50 added.');
      await expect.poll(() => figure(page, 'balance')).toBe(2_500_000);
      // The balance and the credits table are read separately: the table may come a moment later.
      await expect.poll(() => page.textContent('#credits tbody')).toContain('code');
    } finally {
      await page.close();
    }
  });
});

describe.skipIf(!available)('organisations on the console', () => {
  it('an owner invites by email on the page; nothing is granted until the invitee accepts on theirs; a second invitation is declined, a third withdrawn', { timeout: 90_000 }, async () => {
    const owner = await createCustomer({ balance: 3_000_000 });
    const [invitee, otherOwner] = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    const inviteeEmail = `${invitee.userId}@example.test`;
    const withdrawn = `withdrawn-${crypto.randomUUID().slice(0, 8)}@example.test`;
    // Another organisation invites the same person, so the invitee has one to decline.
    expect((await otherOwner.client.rpc('set_member', { p_account_id: otherOwner.accountId, p_email: inviteeEmail })).error).toBeNull();
    const members = async () => (await admin().query('select user_id, role, monthly_budget::int as monthly_budget, invited_email from public.account_members where account_id = $1', [owner.accountId])).rows;

    const ownerPage = await browser.newPage();
    ownerPage.on('dialog', (dialog) => void dialog.accept());
    try {
      await signIn(ownerPage, `${owner.userId}@example.test`);
      const own = `[data-owned-organisation="${owner.accountId}"]`;
      await ownerPage.waitForSelector(`${own} [data-invite]`);
      await ownerPage.fill(`${own} [data-organisation-name] input`, 'Acme Research');
      await ownerPage.click(`${own} [data-organisation-name] button`);
      await expect.poll(() => ownerPage.textContent('#organisations-message')).toBe('Name saved.');
      for (const [address, dollarsBudget] of [[inviteeEmail, '1.5'], [withdrawn, '']] as const) {
        await ownerPage.fill(`${own} [data-invite] [name="email"]`, address);
        await ownerPage.fill(`${own} [data-invite] [name="budget"]`, dollarsBudget);
        await ownerPage.click(`${own} [data-invite] button`);
        await expect.poll(() => ownerPage.textContent('#organisations-message')).toBe(`Invited ${address}: they join when they accept.`);
      }
      await expect.poll(() => ownerPage.textContent(`${own} table`)).toContain(inviteeEmail);
      expect(await ownerPage.textContent(`${own} table`)).toContain('$1.50');
      await ownerPage.click(`${own} [data-withdraw="${withdrawn}"]`);
      await expect.poll(() => ownerPage.textContent('#organisations-message')).toBe(`Withdrew the invitation of ${withdrawn}.`);
      expect(await ownerPage.textContent(own)).not.toContain(withdrawn);
      // Invited, not a member.
      expect(await members()).toEqual([]);
      await screenshot(ownerPage, 'organisation-owner');

      const inviteePage = await browser.newPage();
      try {
        await signIn(inviteePage, inviteeEmail);
        await inviteePage.waitForSelector('[data-accept-invitation]');
        const rows = await inviteePage.locator('#organisations tbody tr').allTextContents();
        const acme = rows.find((row) => row.includes('Acme Research'))!;
        expect(acme).toContain(`${owner.userId}@example.test`);
        expect(acme).toContain('$1.50');
        expect(rows.find((row) => row.includes(`the organisation of ${otherOwner.userId}@example.test`))).toBeTruthy();
        const [{ id: acmeInvitation }] = (await admin().query('select id from public.member_invitations where account_id = $1', [owner.accountId])).rows;
        const [{ id: otherInvitation }] = (await admin().query('select id from public.member_invitations where account_id = $1', [otherOwner.accountId])).rows;
        await screenshot(inviteePage, 'organisation-invitee');

        await inviteePage.click(`[data-decline-invitation="${otherInvitation}"]`);
        await expect.poll(() => inviteePage.textContent('#organisations-message')).toBe(`You declined the organisation of ${otherOwner.userId}@example.test.`);
        await inviteePage.click(`[data-accept-invitation="${acmeInvitation}"]`);
        await expect.poll(() => inviteePage.textContent('#organisations-message')).toBe('You joined Acme Research.');
        // A member now: the organisation's available credits, and a key of their own on it.
        const belonging = inviteePage.locator('#organisations tbody tr', { hasText: 'Acme Research' });
        expect(await belonging.locator('[data-micro]').evaluateAll((cells) => cells.map((cell) => Number((cell as HTMLElement).dataset.micro)))).toEqual([1_500_000, 3_000_000]);
        inviteePage.once('dialog', (dialog) => void dialog.accept('laptop'));
        await inviteePage.click(`[data-member-key="${owner.accountId}"]`);
        expect(await (await inviteePage.waitForSelector('[data-new-member-key]')).textContent()).toMatch(/^tg_/);
      } finally {
        await inviteePage.close();
      }
      expect(await members()).toEqual([{ user_id: invitee.userId, role: 'member', monthly_budget: 1_500_000, invited_email: inviteeEmail }]);

      await ownerPage.click('#refresh');
      await expect.poll(() => ownerPage.locator(`${own} [data-remove-member="${invitee.userId}"]`).count()).toBe(1);
      expect(await ownerPage.textContent(own)).toContain(inviteeEmail);
      await ownerPage.click(`${own} [data-remove-member="${invitee.userId}"]`);
      await expect.poll(() => ownerPage.textContent('#organisations-message')).toBe(`Removed ${inviteeEmail}.`);
      expect(await members()).toEqual([]);
    } finally {
      await ownerPage.close();
    }
    const { rows: audited } = await admin().query(`select action from public.audit_log where subject = $1 and action not like 'ledger\\_%' order by id`, [owner.accountId]);
    expect(audited.map((row) => row.action)).toEqual(['set_organisation_name', 'invite_member', 'invite_member', 'withdraw_invitation', 'accept_invitation', 'create_member_key', 'remove_member']);
  });
});

describe.skipIf(!available)('sign-in links on the console', () => {
  it('a link completes sign-in only in the browser that asked for it: forwarded to a signed-in customer it leaves them as they were, forwarded to a signed-out browser it signs nobody in; the emailed code still signs in', { timeout: 90_000 }, async () => {
    const [owner, other] = await Promise.all([createCustomer({ balance: 1_000_000 }), createCustomer({ balance: 1_000_000 })]);
    const ownerEmail = `${owner.userId}@example.test`;
    const otherEmail = `${other.userId}@example.test`;
    const [ownerContext, otherContext, signedOutContext] = await Promise.all([browser.newContext(), browser.newContext(), browser.newContext()]);
    try {
      const [ownerPage, otherPage, signedOutPage] = await Promise.all([ownerContext.newPage(), otherContext.newPage(), signedOutContext.newPage()]);
      await signIn(otherPage, otherEmail);
      const otherSession = await storedSession(otherPage);
      expect(otherSession?.userId).toBe(other.userId);

      // The owner asks for a link and forwards it to a customer who is signed in, who opens it (in a new tab, as from their mail).
      const forwarded = await requestMail(ownerPage, ownerEmail);
      const opened = await otherContext.newPage();
      await opened.goto(forwarded.link);
      await settle(opened);
      expect(await storedSession(opened)).toEqual(otherSession);
      expect(await opened.textContent('#signed-in-as')).toBe(otherEmail);
      expect(await opened.textContent('#sign-in-notice')).toContain('asked for in another browser');
      // The code is gone from the address (and no Referer carries it anywhere).
      expect(new URL(opened.url()).searchParams.has('code')).toBe(false);
      await otherPage.reload();
      await otherPage.waitForSelector('#signed-in-as');
      expect(await otherPage.textContent('#signed-in-as')).toBe(otherEmail);
      expect(await storedSession(otherPage)).toEqual(otherSession);

      // Forwarded to a browser signed in as nobody: it stays so.
      const forwardedAgain = await requestMail(ownerPage, ownerEmail);
      await signedOutPage.goto(forwardedAgain.link);
      await settle(signedOutPage);
      expect(await storedSession(signedOutPage)).toBeNull();
      expect(await signedOutPage.textContent('#sign-in-message')).toContain('asked for in another browser');
      expect(new URL(signedOutPage.url()).searchParams.has('code')).toBe(false);
      expect(await signedOutPage.locator('#signed-in-as').count()).toBe(0);

      // In the browser that asked for it, the link signs in: in the tab it opens in, and in the tab that asked, which follows.
      const own = await requestMail(ownerPage, ownerEmail);
      const ownTab = await ownerContext.newPage();
      await ownTab.goto(own.link);
      await settle(ownTab);
      expect(await ownTab.textContent('#signed-in-as')).toBe(ownerEmail);
      expect((await storedSession(ownTab))?.userId).toBe(owner.userId);
      expect(new URL(ownTab.url()).searchParams.has('code')).toBe(false);
      for (const tab of [ownTab, ownerPage]) {
        await tab.waitForSelector('#signed-in-as');
        expect(await tab.textContent('#signed-in-as')).toBe(ownerEmail);
        // Read as the owner (a request sent without the session would fail or come back empty).
        await expect.poll(() => figure(tab, 'balance')).toBe(1_000_000);
        await tab.waitForSelector('#keys table');
        expect(await tab.locator('#app .error').count()).toBe(0);
      }

      // The emailed code still signs in, in any browser (here the one the links did not sign in).
      await signIn(signedOutPage, ownerEmail);
      expect(await signedOutPage.textContent('#signed-in-as')).toBe(ownerEmail);
      // And the other customer is still themselves.
      await otherPage.reload();
      await otherPage.waitForSelector('#signed-in-as');
      expect(await otherPage.textContent('#signed-in-as')).toBe(otherEmail);
    } finally {
      await Promise.all([ownerContext.close(), otherContext.close(), signedOutContext.close()]);
    }
  });

  it('a link carrying a session in its fragment (the implicit flow the console once took) switches nobody', { timeout: 60_000 }, async () => {
    const [owner, other] = await Promise.all([createCustomer({ balance: 1_000_000 }), createCustomer({ balance: 1_000_000 })]);
    const ownerEmail = `${owner.userId}@example.test`;
    // The owner's own session, as they could copy it out of their browser.
    const headers = { apikey: stack.anonKey, 'content-type': 'application/json' };
    expect((await fetch(`${stack.supabaseUrl}/auth/v1/otp`, { method: 'POST', headers, body: JSON.stringify({ email: ownerEmail }) })).status).toBe(200);
    const verified = await fetch(`${stack.supabaseUrl}/auth/v1/verify`, { method: 'POST', headers, body: JSON.stringify({ email: ownerEmail, token: (await lastMail(ownerEmail)).code, type: 'email' }) });
    const session = (await verified.json()) as { access_token: string; refresh_token: string; expires_at: number };
    const crafted = `${gateway.url}/console/#${new URLSearchParams({ access_token: session.access_token, expires_at: String(session.expires_at), expires_in: '3600', refresh_token: session.refresh_token, token_type: 'bearer', type: 'magiclink' })}`;

    const [otherContext, signedOutContext] = await Promise.all([browser.newContext(), browser.newContext()]);
    try {
      const [otherPage, signedOutPage] = await Promise.all([otherContext.newPage(), signedOutContext.newPage()]);
      await signIn(otherPage, `${other.userId}@example.test`);
      const otherSession = await storedSession(otherPage);
      const opened = await otherContext.newPage();
      await opened.goto(crafted);
      await settle(opened);
      expect(await storedSession(opened)).toEqual(otherSession);
      expect(await opened.textContent('#signed-in-as')).toBe(`${other.userId}@example.test`);
      expect(await opened.textContent('#sign-in-notice')).toContain('asked for in another browser');
      expect(new URL(opened.url()).hash).toBe('');

      await signedOutPage.goto(crafted);
      await settle(signedOutPage);
      expect(await storedSession(signedOutPage)).toBeNull();
      expect(await signedOutPage.textContent('#sign-in-message')).toContain('asked for in another browser');
      expect(new URL(signedOutPage.url()).hash).toBe('');
    } finally {
      await Promise.all([otherContext.close(), signedOutContext.close()]);
    }
  });
});

describe.skipIf(!available)("the console's security headers", () => {
  it('serves the console with a Content-Security-Policy and the other headers, and works under them with nothing reported', { timeout: 90_000 }, async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 2_000_000 });
    await gateway.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }] });
    await gateway.settled();

    const page = await browser.newPage();
    try {
      const errors = await watchErrors(page);
      const response = (await page.goto(`${gateway.url}/console/`))!;
      const policy = response.headers()['content-security-policy'];
      expect(policy).toBeTruthy();
      const directives = Object.fromEntries(policy!.split(';').map((directive) => directive.trim().split(/\s+/)).map(([name, ...values]) => [name, values]));
      expect(directives['script-src']).toEqual(["'self'"]);
      expect(directives['connect-src']).toEqual(["'self'", new URL(stack.supabaseUrl).origin]);
      expect(directives['frame-ancestors']).toEqual(["'none'"]);
      expect(directives['default-src']).toEqual(["'none'"]);
      expect(response.headers()).toMatchObject({ 'x-frame-options': 'DENY', 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' });
      // The same on the console's other files.
      for (const file of ['app.js', 'app.css']) {
        const served = await fetch(`${gateway.url}/console/${file}`);
        expect(served.headers.get('content-security-policy')).toBe(policy);
        expect(served.headers.get('x-content-type-options')).toBe('nosniff');
      }

      // The customer's page, chart and organisation section (inline style attributes) included.
      await signIn(page, `${customer.userId}@example.test`);
      await page.waitForSelector('#usage-chart canvas');
      await page.waitForSelector('[data-owned-organisation]');
      await page.waitForSelector('#recent table');
      await page.click('#refresh');
      await page.waitForSelector('#usage-chart canvas');
      expect(errors).toEqual([]);

      // The operator's page, its charts included.
      const email = `csp-operator-${crypto.randomUUID().slice(0, 8)}@example.test`;
      const { createAuthUser } = await import('../../scripts/local-supabase/index.ts');
      const operatorId = await createAuthUser(stack.authAdminDatabaseUrl, email);
      await admin().query(`update auth.users set raw_app_meta_data = raw_app_meta_data || '{"role":"admin"}' where id = $1`, [operatorId]);
      await page.click('#sign-out');
      await page.waitForSelector('#ask-code');
      await signIn(page, email);
      await page.waitForSelector('#revenue canvas');
      await page.waitForSelector('#audit');
      expect(errors).toEqual([]);

      // The policy is enforced, not only reported: a script put into the page does not run.
      const ran = await page.evaluate(async () => {
        const script = document.createElement('script');
        script.textContent = 'window.injected = true';
        document.body.append(script);
        await new Promise((resolve) => setTimeout(resolve, 100));
        return (window as unknown as { injected?: boolean }).injected ?? false;
      });
      expect(ran).toBe(false);
      await expect.poll(() => errors.some((error) => error.includes('CSP violation: script-src'))).toBe(true);
    } finally {
      await page.close();
    }
  });

  it('cannot be framed by a page of another origin', { timeout: 60_000 }, async () => {
    const page = await browser.newPage();
    try {
      const consoleRequests: string[] = [];
      page.on('request', (request) => void (request.url().startsWith(gateway.url) && consoleRequests.push(request.url())));
      await page.route('http://framer.test/**', (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html><iframe id="console" src="${gateway.url}/console/"></iframe>` }));
      await page.goto('http://framer.test/');
      // Chromium refuses the framed document and shows its error page in the frame instead.
      const frame = (await (await page.waitForSelector('#console')).contentFrame())!;
      await expect.poll(() => frame.url()).toBe('chrome-error://chromewebdata/');
      // Nothing the console would load was asked for: the document was answered, never run.
      await page.waitForLoadState('networkidle');
      expect(consoleRequests).toEqual([`${gateway.url}/console/`]);
      expect(await frame.locator('#app').count()).toBe(0);
    } finally {
      await page.close();
    }
  });
});
