/**
 * A price in decimal US dollars per million tokens (the dataset's unit) as
 * integer micro-dollars per million tokens (the database's), computed on the
 * number's decimal digits, never by floating-point multiplication: 1.25 →
 * 1,250,000 and 0.1 → 100,000 exactly. A price finer than a micro-dollar per
 * million is rounded up (never sold below cost) and reported as inexact.
 */
export function microPerMillion(dollarsPerMillion: number): { micro: number; exact: boolean } {
  if (!Number.isFinite(dollarsPerMillion) || dollarsPerMillion < 0) {
    throw new RangeError(`not a price: ${dollarsPerMillion}`);
  }
  // The shortest decimal that round-trips, possibly in exponent form ("1e-7").
  const [mantissa = '0', exponentText] = String(dollarsPerMillion).toLowerCase().split('e');
  const [whole = '0', fraction = ''] = mantissa.split('.');
  // Shift the decimal point 6 places right (micro-units), plus the exponent.
  const shift = 6 + Number(exponentText ?? 0);
  const digits = whole + fraction;
  const pointAt = whole.length + shift;
  let integerDigits: string;
  let rest: string;
  if (pointAt <= 0) {
    integerDigits = '0';
    rest = digits;
  } else if (pointAt >= digits.length) {
    integerDigits = digits + '0'.repeat(pointAt - digits.length);
    rest = '';
  } else {
    integerDigits = digits.slice(0, pointAt);
    rest = digits.slice(pointAt);
  }
  const exact = !/[1-9]/.test(rest);
  const micro = Number(BigInt(integerDigits || '0') + (exact ? 0n : 1n));
  if (!Number.isSafeInteger(micro)) throw new RangeError(`price out of range: ${dollarsPerMillion}`);
  return { micro, exact };
}
