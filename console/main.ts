import { createClient, type Session, type SupabaseClient } from '@supabase/supabase-js';
import { customerView } from './customer.ts';
import { el } from './format.ts';

// The console: a static page served by the deployment, talking to Supabase
// with the anon key and the user's session (so row-level security decides what
// it reads) and signing in with Supabase Auth (email one-time code or magic link).

const app = document.querySelector('#app')!;
const who = document.querySelector('#who')!;

function show(...children: Node[]) {
  app.replaceChildren(...children);
}

function signIn(supabase: SupabaseClient) {
  const email = el('input', { type: 'email', required: '', id: 'email', autocomplete: 'email', placeholder: 'you@example.com', 'aria-label': 'Email' }) as HTMLInputElement;
  const message = el('p', { class: 'note', id: 'sign-in-message' });
  const askCode = el('form', { id: 'ask-code' }, email, el('button', { type: 'submit', class: 'primary' }, 'Email me a sign-in code'));
  const code = el('input', { inputmode: 'numeric', autocomplete: 'one-time-code', id: 'code', placeholder: '123456', 'aria-label': 'Sign-in code' }) as HTMLInputElement;
  const enterCode = el('form', { id: 'enter-code', hidden: '' }, code, el('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  askCode.addEventListener('submit', async (event) => {
    event.preventDefault();
    message.textContent = 'Sending…';
    const { error } = await supabase.auth.signInWithOtp({ email: email.value.trim(), options: { emailRedirectTo: location.href.split('#')[0] } });
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

async function signedIn(supabase: SupabaseClient, session: Session) {
  const out = el('button', { type: 'button', id: 'sign-out' }, 'Sign out');
  out.addEventListener('click', () => void supabase.auth.signOut());
  who.replaceChildren(el('span', { id: 'signed-in-as' }, session.user.email ?? session.user.id), ' ', out);
  const operator = (session.user.app_metadata as { role?: string } | undefined)?.role === 'admin';
  if (operator) {
    const { operatorView } = await import('./operator.ts');
    show(...operatorView(supabase));
  } else {
    show(...customerView(supabase, session.user.id));
  }
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
  const supabase = createClient(config.supabaseUrl, config.anonKey, { auth: { flowType: 'implicit', detectSessionInUrl: true, persistSession: true } });
  let current: string | undefined;
  const render = (session: Session | null) => {
    const key = session ? `${session.user.id}` : '';
    if (key === current) return;
    current = key;
    if (session) void signedIn(supabase, session);
    else signIn(supabase);
  };
  supabase.auth.onAuthStateChange((_event, session) => render(session));
  const { data, error } = await supabase.auth.getSession();
  if (error) show(el('p', { class: 'error' }, `Sign-in failed: ${error.message}`));
  render(data.session);
}

void main();
