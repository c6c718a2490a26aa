import { afterAll, afterEach, expect } from 'vitest';
import { closeAdmin } from './supabase.ts';
import { findInvariantViolations } from './invariants.ts';

// Every test, database or not, ends with the books balanced.
afterEach(async () => {
  expect(await findInvariantViolations()).toEqual([]);
});

afterAll(async () => {
  await closeAdmin();
});
