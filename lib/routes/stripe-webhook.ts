import type { Context } from 'hono';
import Stripe from 'stripe';
import type { AppEnv } from '../app-env.ts';
import { billingUnavailable, GatewayError } from '../errors.ts';

const cryptoProvider = Stripe.createSubtleCryptoProvider();
let stripe: Stripe | undefined;

/** Each handled event type and the SQL function that applies it. */
const handlers: Record<string, (event: Stripe.Event) => { name: string; args: Record<string, unknown> }> = {
  'checkout.session.completed': (event) => checkout(event),
  'checkout.session.async_payment_succeeded': (event) => checkout(event),
  'checkout.session.async_payment_failed': (event) => checkout(event),
  'charge.refunded': (event) => ({ name: 'apply_stripe_refund', args: { p_event_id: event.id, p_charge: event.data.object } }),
  'charge.dispute.created': (event) => ({ name: 'apply_stripe_dispute', args: { p_event_id: event.id, p_dispute: event.data.object } }),
  'invoice.paid': (event) => ({ name: 'apply_stripe_invoice', args: { p_event_id: event.id, p_invoice: event.data.object } }),
};

function checkout(event: Stripe.Event) {
  return { name: 'apply_stripe_checkout', args: { p_event_id: event.id, p_event_type: event.type, p_session: event.data.object } };
}

/**
 * POST /webhooks/stripe: verifies the signature on the raw body (SubtleCrypto,
 * Stripe's default 300 s tolerance), then applies the event in one database
 * transaction. Events of other types are recorded and answered 2xx. A failure
 * to reach the database answers 503, so Stripe retries.
 */
export async function stripeWebhook(c: Context<AppEnv>): Promise<Response> {
  const { config, database } = c.var.services;
  if (!config.STRIPE_WEBHOOK_SECRET) {
    throw new GatewayError(503, 'stripe_not_configured', 'STRIPE_WEBHOOK_SECRET is not set.');
  }
  const signature = c.req.header('stripe-signature');
  if (!signature) throw new GatewayError(400, 'missing_signature', 'No Stripe-Signature header.');
  const payload = await c.req.text();
  stripe ??= new Stripe(config.STRIPE_SECRET_KEY ?? 'sk_unused', { httpClient: Stripe.createFetchHttpClient() });
  let event: Stripe.Event;
  try {
    event = await stripe.webhooks.constructEventAsync(payload, signature, config.STRIPE_WEBHOOK_SECRET, undefined, cryptoProvider);
  } catch (error) {
    throw new GatewayError(400, 'invalid_signature', `The webhook could not be verified: ${(error as Error).message}`);
  }

  const handler = handlers[event.type];
  const call = handler
    ? handler(event)
    : { name: 'record_ignored_stripe_event', args: { p_event_id: event.id, p_event_type: event.type, p_object: event.data.object } };
  const { data, error, status } = await database.rpc(call.name, call.args);
  if (error) {
    if (status >= 400 && status < 500) throw new GatewayError(400, 'invalid_event', `The event could not be applied: ${error.message}`);
    throw billingUnavailable('The event could not be recorded now; Stripe will deliver it again.');
  }
  return c.json({ received: true, ...(data as Record<string, unknown>) });
}
