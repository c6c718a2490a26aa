// Amounts are integer micro-units (1 USD = 1,000,000): shown in dollars, with the
// exact micro-unit value on hover.

export function dollars(micro: number | string | null | undefined): HTMLElement {
  const span = document.createElement('span');
  if (micro === null || micro === undefined) {
    span.textContent = '—';
    return span;
  }
  const value = Number(micro);
  const abs = Math.abs(value);
  // Every micro-dollar shown (up to six decimals), at least the cents.
  span.textContent = `${value < 0 ? '−' : ''}$${(abs / 1_000_000).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 6 })}`;
  span.dataset.micro = String(value);
  span.title = `${value.toLocaleString('en-US')} micro-USD`;
  return span;
}

export function cents(amount: number, currency: string): string {
  return `${(amount / 100).toLocaleString('en-US', { style: 'currency', currency: currency.toUpperCase() })}`;
}

export function when(iso: string | null | undefined): string {
  return iso ? new Date(iso).toLocaleString() : '—';
}

/** An element with children: strings become text. */
export function el(tag: string, attributes: Record<string, string> = {}, ...children: Array<Node | string | null | undefined>): HTMLElement {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  for (const child of children) if (child !== null && child !== undefined) element.append(child);
  return element;
}

export function table(headers: Array<[string, boolean?]>, rows: Array<Array<Node | string>>, empty: string): HTMLElement {
  if (!rows.length) return el('p', { class: 'note' }, empty);
  return el(
    'table',
    {},
    el('thead', {}, el('tr', {}, ...headers.map(([label, numeric]) => el('th', numeric ? { class: 'num' } : {}, label)))),
    el('tbody', {}, ...rows.map((row) => el('tr', {}, ...row.map((cell, index) => el('td', headers[index]?.[1] ? { class: 'num' } : {}, cell))))),
  );
}

/** A section whose body loads: "Loading…", then the content or the error in words; `reload` loads it again. */
export function section(title: string, load: () => Promise<Node>, id: string): { element: HTMLElement; reload: () => Promise<void> } {
  const body = el('div', { class: 'loading' }, 'Loading…');
  const element = el('section', { id }, el('h2', {}, title), body);
  const reload = async () => {
    try {
      const content = await load();
      body.className = '';
      body.replaceChildren(content);
    } catch (error) {
      body.className = '';
      body.replaceChildren(el('p', { class: 'error' }, `Could not load: ${(error as Error).message}`));
    }
  };
  void reload();
  return { element, reload };
}
