import { expect } from 'vitest';
import Stripe from 'stripe';

// Event payloads shaped like Stripe's for the API version the SDK pins.
export const apiVersion = '2026-10-28.endive';

const stripe = new Stripe('sk_test_unused');
const id = (prefix: string) => `${prefix}_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`;
const now = () => Math.floor(Date.now() / 1000);

export function stripeEvent(type: string, object: Record<string, unknown>) {
  return {
    id: id('evt'),
    object: 'event',
    api_version: apiVersion,
    created: now(),
    data: { object },
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
  };
}

export function checkoutSession(options: {
  clientReferenceId?: string | null;
  paymentLink: string;
  amount: number;
  paymentStatus?: 'paid' | 'unpaid' | 'no_payment_required';
  mode?: 'payment' | 'subscription';
  customer?: string | null;
  paymentIntent?: string | null;
  /** Before discounts and tax (the items × quantity); `amount` is the total paid. */
  subtotal?: number;
  discount?: number;
  tax?: number;
}) {
  const mode = options.mode ?? 'payment';
  return {
    id: id('cs'),
    object: 'checkout.session',
    after_expiration: null,
    allow_promotion_codes: options.discount !== undefined,
    amount_subtotal: options.subtotal ?? options.amount,
    amount_total: options.amount,
    billing_address_collection: 'auto',
    cancel_url: null,
    client_reference_id: options.clientReferenceId ?? null,
    created: now() - 60,
    currency: 'usd',
    customer: options.customer ?? null,
    customer_creation: 'if_required',
    customer_details: { email: 'buyer@example.test', name: 'Buyer', phone: null, tax_exempt: 'none', tax_ids: [] },
    customer_email: null,
    expires_at: now() + 86_400,
    invoice: null,
    livemode: false,
    locale: 'auto',
    metadata: {},
    mode,
    payment_intent: mode === 'payment' ? (options.paymentIntent === undefined ? id('pi') : options.paymentIntent) : null,
    payment_link: options.paymentLink,
    payment_method_types: ['card'],
    payment_status: options.paymentStatus ?? 'paid',
    status: 'complete',
    submit_type: 'auto',
    subscription: mode === 'subscription' ? id('sub') : null,
    success_url: 'https://example.test/thanks',
    total_details: { amount_discount: options.discount ?? 0, amount_shipping: 0, amount_tax: options.tax ?? 0 },
    ui_mode: 'hosted',
    url: null,
  };
}

export function charge(options: { paymentIntent: string; amount: number; amountRefunded: number }) {
  return {
    id: id('ch'),
    object: 'charge',
    amount: options.amount,
    amount_captured: options.amount,
    amount_refunded: options.amountRefunded,
    captured: true,
    created: now() - 30,
    currency: 'usd',
    disputed: false,
    livemode: false,
    paid: true,
    payment_intent: options.paymentIntent,
    refunded: options.amountRefunded === options.amount,
    status: 'succeeded',
  };
}

export function dispute(options: { paymentIntent: string; amount: number; id?: string; status?: string }) {
  return {
    id: options.id ?? id('dp'),
    object: 'dispute',
    amount: options.amount,
    charge: id('ch'),
    created: now(),
    currency: 'usd',
    is_charge_refundable: false,
    livemode: false,
    metadata: {},
    payment_intent: options.paymentIntent,
    reason: 'fraudulent',
    status: options.status ?? 'needs_response',
  };
}

export function subscription(options: { customer: string; price: string; status?: string; cancelAtPeriodEnd?: boolean }) {
  return {
    id: id('sub'),
    object: 'subscription',
    cancel_at_period_end: options.cancelAtPeriodEnd ?? false,
    canceled_at: null,
    collection_method: 'charge_automatically',
    created: now() - 86_400,
    currency: 'usd',
    customer: options.customer,
    items: {
      object: 'list',
      data: [{ id: id('si'), object: 'subscription_item', price: { id: options.price, object: 'price', currency: 'usd', unit_amount: 2000 }, quantity: 1 }],
      has_more: false,
    },
    livemode: false,
    status: options.status ?? 'active',
  };
}

/** An invoice in the shape of API versions before 2025: top-level subscription, lines[].price. */
export function legacyInvoice(options: { customer: string; price: string; amount: number }) {
  return {
    id: id('in'),
    object: 'invoice',
    amount_due: options.amount,
    amount_paid: options.amount,
    billing_reason: 'subscription_cycle',
    created: now(),
    currency: 'usd',
    customer: options.customer,
    subscription: id('sub'),
    lines: {
      object: 'list',
      data: [{ id: id('il'), object: 'line_item', amount: options.amount, currency: 'usd', price: { id: options.price, object: 'price' }, quantity: 1, period: { start: now(), end: now() + 30 * 86_400 } }],
      has_more: false,
    },
    status: 'paid',
  };
}

/**
 * A subscription's invoice. `prorations`: lines for part of a period on a plan
 * left or taken mid-period (Stripe lists them before the period's line);
 * `price: null` makes an invoice of those lines only.
 */
export function invoice(options: { customer: string; price: string | null; amount: number; prorations?: Array<{ price: string; amount: number }> }) {
  const subscription = id('sub');
  const line = (price: string, amount: number, proration: boolean) => ({
    id: id('il'),
    object: 'line_item',
    amount,
    currency: 'usd',
    parent: proration
      ? { type: 'invoice_item_details', invoice_item_details: { invoice_item: id('ii'), proration: true, proration_details: { credited_items: null }, subscription } }
      : { type: 'subscription_item_details', subscription_item_details: { invoice_item: null, proration: false, proration_details: { credited_items: null }, subscription, subscription_item: id('si') } },
    pricing: { type: 'price_details', price_details: { price, product: id('prod') }, unit_amount_decimal: String(amount) },
    quantity: 1,
    // A proration covers the rest of the period the change came in, which ends as the next begins.
    period: proration ? { start: now() - 10 * 86_400, end: now() } : { start: now(), end: now() + 30 * 86_400 },
  });
  return {
    id: id('in'),
    object: 'invoice',
    amount_due: options.amount,
    amount_paid: options.amount,
    amount_remaining: 0,
    billing_reason: 'subscription_cycle',
    collection_method: 'charge_automatically',
    created: now(),
    currency: 'usd',
    customer: options.customer,
    livemode: false,
    parent: { type: 'subscription_details', quote_details: null, subscription_details: { metadata: {}, subscription } },
    lines: {
      object: 'list',
      data: [
        ...(options.prorations ?? []).map((proration) => line(proration.price, proration.amount, true)),
        ...(options.price === null ? [] : [line(options.price, options.amount - (options.prorations ?? []).reduce((sum, proration) => sum + proration.amount, 0), false)]),
      ],
      has_more: false,
      url: '/v1/invoices/lines',
    },
    status: 'paid',
  };
}

/** An InvoicePayment: the link between an invoice and the payment intent that paid it. */
export function invoicePayment(options: { invoice: string; paymentIntent: string | null; amount: number; status?: string }) {
  return {
    id: id('inpay'),
    object: 'invoice_payment',
    amount_paid: options.status === undefined || options.status === 'paid' ? options.amount : null,
    amount_requested: options.amount,
    created: now(),
    currency: 'usd',
    invoice: options.invoice,
    is_default: true,
    livemode: false,
    payment: options.paymentIntent === null ? { type: 'charge', charge: id('ch') } : { type: 'payment_intent', payment_intent: options.paymentIntent },
    status: options.status ?? 'paid',
    status_transitions: { canceled_at: null, paid_at: options.status === undefined || options.status === 'paid' ? now() : null },
  };
}

/** A Stripe-Signature header made with the SDK's own test helper. */
export function signature(payload: string, secret: string, timestamp?: number): string {
  return stripe.webhooks.generateTestHeaderString({ payload, secret, ...(timestamp ? { timestamp } : {}) });
}

/**
 * Delivers signed events to a gateway's Stripe webhook (its URL read when called, so it may
 * be started later); every one must be answered 2xx. Returns the answer's body.
 */
export function webhookDeliverer(gatewayUrl: () => string, secret: string) {
  return async (event: ReturnType<typeof stripeEvent>): Promise<Record<string, unknown>> => {
    const body = JSON.stringify(event);
    const response = await fetch(`${gatewayUrl()}/webhooks/stripe`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': signature(body, secret) },
      body,
    });
    const answer = (await response.json()) as Record<string, unknown>;
    expect({ type: event.type, status: response.status, answer }).toMatchObject({ status: 200 });
    return answer;
  };
}
