import type { Context } from 'hono';
import Stripe from 'stripe';
import { z } from 'zod';
import type { AppEnv } from '../app-env.ts';
import { billingUnavailable, GatewayError } from '../errors.ts';

const cryptoProvider = Stripe.createSubtleCryptoProvider();
let stripe: Stripe | undefined;

/** What an event must be for anything to be written: the rest of it is the database's to read. */
const eventSchema = z.object({
  id: z.string().regex(/^evt_[A-Za-z0-9_]+$/),
  type: z.string().min(1),
  data: z.object({ object: z.record(z.string(), z.unknown()) }),
});

type StripeEvent = z.infer<typeof eventSchema>;

const call = (name: string, objectArgument: string, withType = false) => (event: StripeEvent) => ({
  name,
  args: { p_event_id: event.id, ...(withType ? { p_event_type: event.type } : {}), [objectArgument]: event.data.object },
});

/** Each handled event type and the SQL function that applies it. */
const handlers: Record<string, (event: StripeEvent) => { name: string; args: Record<string, unknown> }> = {
  'checkout.session.completed': call('apply_stripe_checkout', 'p_session', true),
  'checkout.session.async_payment_succeeded': call('apply_stripe_checkout', 'p_session', true),
  'checkout.session.async_payment_failed': call('apply_stripe_checkout', 'p_session', true),
  'charge.refunded': call('apply_stripe_refund', 'p_charge'),
  'charge.dispute.created': call('apply_stripe_dispute', 'p_dispute'),
  'charge.dispute.closed': call('apply_stripe_dispute_closed', 'p_dispute'),
  'customer.subscription.updated': call('apply_stripe_subscription', 'p_subscription', true),
  'customer.subscription.deleted': call('apply_stripe_subscription', 'p_subscription', true),
  'invoice.paid': call('apply_stripe_invoice', 'p_invoice'),
  'invoice_payment.paid': call('apply_stripe_invoice_payment', 'p_invoice_payment'),
};

/**
 * POST /webhooks/stripe: verifies the signature on the raw body (SubtleCrypto,
 * Stripe's default 300 s tolerance), checks it is an event at all, then applies
 * it in one database transaction. Events of other types are recorded and
 * answered 2xx. A failure to reach the database answers 503, so Stripe retries.
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
  let verified: unknown;
  try {
    verified = await stripe.webhooks.constructEventAsync(payload, signature, config.STRIPE_WEBHOOK_SECRET, undefined, cryptoProvider);
  } catch (error) {
    throw new GatewayError(400, 'invalid_signature', `The webhook could not be verified: ${(error as Error).message}`);
  }
  // Signed is not well-formed: `null`, `[]` or an object without data.object are refused, writing nothing.
  const parsed = eventSchema.safeParse(verified);
  if (!parsed.success) throw new GatewayError(400, 'invalid_event', 'The body is signed but is not a Stripe event (id, type, data.object).');
  const event = parsed.data;

  const handler = handlers[event.type];
  const { name, args } = handler
    ? handler(event)
    : { name: 'record_ignored_stripe_event', args: { p_event_id: event.id, p_event_type: event.type, p_object: event.data.object } };
  const { data, error, status } = await database.rpc(name, args);
  if (error) {
    if (status >= 400 && status < 500) throw new GatewayError(400, 'invalid_event', `The event could not be applied: ${error.message}`);
    throw billingUnavailable('The event could not be recorded now; Stripe will deliver it again.');
  }
  return c.json({ received: true, ...(data as Record<string, unknown>) });
}
