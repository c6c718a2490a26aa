import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { refusalError, refusalStatus } from '../../lib/errors.ts';

const migrations = join(import.meta.dirname, '../../supabase/migrations');

/** Refusals the gateway handles itself, never a client's answer. */
const internal = new Set(['not_taken_ahead']);

describe('refusals of the database', () => {
  it('every code a migration refuses with has a status of its own, so none falls to 400 by being forgotten', () => {
    const codes = new Set<string>();
    for (const file of readdirSync(migrations).filter((name) => name.endsWith('.sql'))) {
      for (const match of readFileSync(join(migrations, file), 'utf8').matchAll(/private\.refusal\('([a-z_]+)'/g)) codes.add(match[1]!);
    }
    expect(codes.size).toBeGreaterThan(10);
    expect([...codes].filter((code) => !internal.has(code) && !(code in refusalStatus))).toEqual([]);
  });

  it("a member past their monthly budget is refused as a key past its caps is, and a key whose holder left as a revoked one", () => {
    expect(refusalError({ status: 'refused', code: 'member_budget_reached', message: 'budget' }).status).toBe(403);
    expect(refusalError({ status: 'refused', code: 'not_a_member', message: 'gone' }).status).toBe(401);
  });
});
