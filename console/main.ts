import { createClient, type AuthError, type Session, type SupabaseClient } from '@supabase/supabase-js';
import { customerView } from './customer.ts';
import { el } from './format.ts';

// The console: a static page served by the deployment, talking to Supabase
// with the anon key and the user's session (so row-level security decides what
// it reads) and signing in with Supabase Auth (email one-time code or magic link).
//
// Sign-in links use the PKCE flow: asking for a mail leaves a code verifier in
// this browser's storage, the link lands here with `?code=`, and supabase-js
// exchanges that code for a session only with the verifier. So a link completes
// sign-in only in the browser that asked for it: forwarded to someone else, it
// signs them in as nobody and leaves their own session alone. (In the implicit
// flow the link carried the session itself, and opening it replaced whatever
// session the browser had.) The emailed code needs no verifier: it works anywhere.

const app = document.querySelector('#app')!;
const who = document.querySelector('#who')!;

function show(...children: Node[]) {
  app.replaceChildren(...children);
}

function signIn(supabase: SupabaseClient, notice?: string) {
  const email = el('input', { type: 'email', required: '', id: 'email', autocomplete: 'email', placeholder: 'you@example.com', 'aria-label': 'Email' }) as HTMLInputElement;
  const message = el('p', { class: notice ? 'error' : 'note', id: 'sign-in-message' }, notice ?? '');
  const askCode = el('form', { id: 'ask-code' }, email, el('button', { type: 'submit', class: 'primary' }, 'Email me a sign-in code'));
  const code = el('input', { inputmode: 'numeric', autocomplete: 'one-time-code', id: 'code', placeholder: '123456', 'aria-label': 'Sign-in code' }) as HTMLInputElement;
  const enterCode = el('form', { id: 'enter-code', hidden: '' }, code, el('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  askCode.addEventListener('submit', async (event) => {
    event.preventDefault();
    message.textContent = 'Sending…';
    const { error } = await supabase.auth.signInWithOtp({ email: email.value.trim(), options: { emailRedirectTo: `${location.origin}${location.pathname}` } });
    if (error) {
      message.textContent = `Could not send the code: ${error.message}`;
      message.className = 'error';
      return;
    }
    message.className = 'note';
    message.textContent = `We sent a code and a sign-in link to ${email.value.trim()}.`;
    enterCode.hidden = false;
    code.focus();
  });
  enterCode.addEventListener('submit', async (event) => {
    event.preventDefault();
    const { error } = await supabase.auth.verifyOtp({ email: email.value.trim(), token: code.value.trim(), type: 'email' });
    if (error) {
      message.textContent = `That code did not work: ${error.message}`;
      message.className = 'error';
    }
  });
  who.replaceChildren();
  show(el('section', { id: 'sign-in' }, el('h2', {}, 'Sign in'), askCode, enterCode, message));
}

/**
 * Waits (a little) until the client reads `session` from its storage. A sign-in
 * in another tab of this browser (the tab a mailed link opened) reaches this one
 * by BroadcastChannel, which can overtake localStorage, and supabase-js takes the
 * token of each request from storage: read too early, it goes out as anon.
 */
async function untilStored(supabase: SupabaseClient, session: Session) {
  for (let tries = 0; tries < 40; tries++) {
    const { data } = await supabase.auth.getSession();
    if (data.session?.access_token === session.access_token) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function signedIn(supabase: SupabaseClient, session: Session, notice: string | undefined, stillShown: () => boolean) {
  await untilStored(supabase, session);
  if (!stillShown()) return;
  const out = el('button', { type: 'button', id: 'sign-out' }, 'Sign out');
  out.addEventListener('click', () => void supabase.auth.signOut());
  who.replaceChildren(el('span', { id: 'signed-in-as' }, session.user.email ?? session.user.id), ' ', out);
  const operator = (session.user.app_metadata as { role?: string } | undefined)?.role === 'admin';
  const noticed = notice ? [el('p', { class: 'error', id: 'sign-in-notice', role: 'status' }, notice)] : [];
  if (operator) {
    const { operatorView } = await import('./operator.ts');
    show(...noticed, ...operatorView(supabase));
  } else {
    show(...noticed, ...customerView(supabase, session.user.id));
  }
}

/**
 * Takes what a sign-in link left in the address (`?code=`, or an error, or a
 * session in the fragment) out of it, once supabase-js has read it: nothing of
 * it stays in the history. Says whether a code was left, that is, one this
 * browser holds no verifier for (supabase-js removes the codes it exchanges).
 */
function clearSignInLink(): { codeLeft: boolean } {
  const url = new URL(location.href);
  const codeLeft = url.searchParams.has('code');
  for (const name of ['code', 'error', 'error_code', 'error_description']) url.searchParams.delete(name);
  const fragment = new URLSearchParams(url.hash.slice(1));
  if (['access_token', 'refresh_token', 'error', 'error_code', 'error_description'].some((name) => fragment.has(name))) url.hash = '';
  if (url.href !== location.href) history.replaceState(history.state, '', url.href);
  return { codeLeft };
}

const foreignLink = 'This sign-in link was asked for in another browser, so it does not sign anyone in here.';

/** Where a sign-in link's error code (from the address, or from Auth when the code is exchanged) is found. */
function linkErrorCode(error: AuthError): string | undefined {
  const details = (error as AuthError & { details?: { code?: unknown } | null }).details;
  return typeof details?.code === 'string' ? details.code : error.code;
}

/**
 * What to tell someone who opened a sign-in link that did not sign them in:
 * always one of a few fixed sentences, chosen by the error's code. Never the
 * error's own words: anyone can craft a link to the console whose address
 * carries an `error_description` of their choosing, and the page must not
 * put it in front of whoever opens it.
 */
function linkNotice(error: AuthError | null, codeLeft: boolean): string | undefined {
  // Not this browser's: a code without a verifier here, one that does not match it, or a session in the fragment (implicit flow).
  if ((!error && codeLeft) || error?.code === 'bad_code_verifier' || error?.name === 'AuthPKCEGrantCodeExchangeError') return foreignLink;
  if (!error) return undefined;
  if (['flow_state_not_found', 'flow_state_expired', 'otp_expired'].includes(linkErrorCode(error) ?? '')) {
    return 'That sign-in link has expired or was already used.';
  }
  return 'That sign-in link did not work.';
}

async function main() {
  let config: { supabaseUrl: string; anonKey: string };
  try {
    const response = await fetch('/console/config.json');
    if (!response.ok) throw new Error(((await response.json().catch(() => ({}))) as { error?: { message?: string } }).error?.message ?? `HTTP ${response.status}`);
    config = (await response.json()) as typeof config;
  } catch (error) {
    show(el('p', { class: 'error' }, `The console is not configured: ${(error as Error).message}`));
    return;
  }
  const supabase = createClient(config.supabaseUrl, config.anonKey, { auth: { flowType: 'pkce', detectSessionInUrl: true, persistSession: true } });
  // The client reads a sign-in link in the address as it starts; this is what came of it.
  const { error: linkError } = await supabase.auth.initialize();
  let notice = linkNotice(linkError, clearSignInLink().codeLeft);
  let current: string | undefined;
  const render = (session: Session | null) => {
    const key = session ? `${session.user.id}` : '';
    if (key === current) return;
    current = key;
    const shown = notice;
    notice = undefined;
    if (session) void signedIn(supabase, session, shown && `${shown} You are still signed in as ${session.user.email ?? session.user.id}.`, () => current === key);
    else signIn(supabase, shown && `${shown} Ask for a code here instead.`);
  };
  supabase.auth.onAuthStateChange((_event, session) => render(session));
  const { data, error } = await supabase.auth.getSession();
  if (error) show(el('p', { class: 'error' }, `Sign-in failed: ${error.message}`));
  render(data.session);
}

void main();
