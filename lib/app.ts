import { Hono, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { AppEnv, Services } from './app-env.ts';
import { LedgerError } from './billing/ledger.ts';
import { billingUnavailable, GatewayError, renderError, type ErrorSurface } from './errors.ts';
import { chatCompletions } from './routes/chat-completions.ts';
import { embeddings } from './routes/embeddings.ts';
import { credits, models } from './routes/account.ts';
import { anthropicMessages } from './routes/anthropic-messages.ts';
import { anthropicCountTokens } from './routes/count-tokens.ts';
import { geminiGenerateContent } from './routes/gemini-generate-content.ts';
import { retrieveResponse, responses } from './routes/responses.ts';
import { revokeKey } from './routes/revoke-key.ts';
import { settlementDrain } from './routes/settlement-drain.ts';
import { stripeWebhook } from './routes/stripe-webhook.ts';

function surfaceOf(path: string): ErrorSurface {
  if (path.startsWith('/v1/messages')) return 'anthropic';
  if (path.startsWith('/v1beta')) return 'google';
  // OpenAI's shape everywhere else, webhooks included: {error: {message, type, code, param}}.
  return 'openai';
}

/** The gateway: one hono app for the edge, Node and tests alike. */
export function createApp(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.use(async function requestContext(c, next) {
    c.set('requestId', crypto.randomUUID());
    c.set('services', services);
    services.activity.requests++;
    try {
      await next();
    } finally {
      services.activity.requests--;
    }
    // No hold outlives its request: one still open here (an exception, a refusal
    // after authorize) delivered nothing, so it is released and nothing charged.
    if (c.var.hold?.open) c.var.hold.release(c.error ? `the request failed: ${c.error.message}` : 'the request ended without settling');
    // The request's id, or the one of the hold taken ahead that it adopted.
    c.res.headers.set('x-request-id', c.var.requestId);
    for (const [name, value] of Object.entries(c.var.rateLimitHeaders ?? {})) {
      if (!c.res.headers.has(name)) c.res.headers.set(name, value);
    }
  });

  const maxSize = services.config.MAX_BODY_BYTES;
  const tooLarge = () => {
    throw new GatewayError(413, 'request_too_large', `The request body is larger than ${maxSize} bytes.`);
  };
  const countBody = bodyLimit({ maxSize, onError: tooLarge });
  // A body that states its length is judged by it, and left unread: reading the
  // body here (as hono's bodyLimit does, through request.body) turns Node's
  // request into a web stream before the route reads it as text, which cost
  // 0.2–0.7 ms before the upstream call was sent (in process, after an idle
  // moment). Node's HTTP parser and the edge runtime both hold a body to its
  // Content-Length. Only a body without one (chunked) is counted as it is read.
  const limitBody: MiddlewareHandler<AppEnv> = async (c, next) => {
    const length = c.req.header('content-length');
    if (length === undefined || c.req.header('transfer-encoding') !== undefined) return countBody(c, next);
    if (Number.parseInt(length, 10) > maxSize) tooLarge();
    await next();
  };
  app.use('/v1/*', limitBody);
  app.use('/v1beta/*', limitBody);
  app.use('/webhooks/*', limitBody);

  app.get('/health', (c) => c.json({ status: 'ok' }));
  // What the console (public/console/) needs to reach Supabase: the project URL and its public anon key.
  app.get('/console/config.json', (c) => {
    const { config } = c.var.services;
    if (!config.SUPABASE_ANON_KEY) throw new GatewayError(503, 'console_not_configured', 'SUPABASE_ANON_KEY is not set: the console cannot reach Supabase.');
    return c.json({ supabaseUrl: config.SUPABASE_PUBLIC_URL ?? config.SUPABASE_URL, anonKey: config.SUPABASE_ANON_KEY });
  });
  // The console revokes keys here: the database as the user, then the mark every instance checks (see the route).
  app.post('/console/keys/:id/revoke', revokeKey);
  app.get('/v1/models', models);
  app.get('/v1/credits', credits);
  app.post('/v1/chat/completions', chatCompletions);
  app.post('/v1/embeddings', embeddings);
  app.post('/v1/responses', responses);
  app.get('/v1/responses/:id', retrieveResponse);
  app.get('/v1/responses/:id/input_items', retrieveResponse);
  app.post('/v1/messages', anthropicMessages);
  app.post('/v1/messages/count_tokens', anthropicCountTokens);
  app.post('/v1beta/models/:target', geminiGenerateContent);
  app.post('/webhooks/stripe', stripeWebhook);
  app.on(['GET', 'POST'], '/internal/settlements/drain', settlementDrain);

  app.notFound((c) => {
    const error = new GatewayError(404, 'not_found', `No route for ${c.req.method} ${c.req.path}.`);
    return c.json(renderError(error, surfaceOf(c.req.path)), 404);
  });

  app.onError(function renderGatewayError(error, c) {
    let gatewayError: GatewayError;
    if (error instanceof GatewayError) {
      gatewayError = error;
    } else if (error instanceof LedgerError) {
      // The database refused nothing of the client's: it is down, stalled past its
      // deadline or failing. Nothing was sent upstream.
      services.log({ level: 'error', event: 'database_unavailable', requestId: c.var.requestId, status: error.status, code: error.code, error: error.message });
      gatewayError = billingUnavailable();
    } else {
      services.log({ level: 'error', event: 'unhandled_error', requestId: c.var.requestId, error: String(error), stack: (error as Error).stack });
      gatewayError = new GatewayError(500, 'internal_error', 'The gateway failed to handle this request.');
    }
    const response = c.json(renderError(gatewayError, surfaceOf(c.req.path)), gatewayError.status as 400);
    for (const [name, value] of Object.entries(gatewayError.options.headers ?? {})) response.headers.set(name, value);
    response.headers.set('x-request-id', c.var.requestId);
    return response;
  });

  return app;
}
