import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { startLocalSupabase } from '../../scripts/local-supabase/index.ts';

export interface StackInfo {
  supabaseUrl: string;
  anonKey: string;
  serviceRoleKey: string;
  publishableKey: string;
  secretKey: string;
  jwtSecret: string;
  databaseUrl: string;
  adminDatabaseUrl: string;
  authAdminDatabaseUrl: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    stack: StackInfo;
  }
}

/** Starts the local Supabase stack once for the whole suite, on free ports, and removes it after. */
export default async function setup(project: TestProject) {
  const dataDir = await mkdtemp(join(tmpdir(), 'tollgate-test-'));
  const stack = await startLocalSupabase({ dataDir, persistent: false });
  project.provide('stack', {
    supabaseUrl: stack.supabaseUrl,
    anonKey: stack.anonKey,
    serviceRoleKey: stack.serviceRoleKey,
    publishableKey: stack.publishableKey,
    secretKey: stack.secretKey,
    jwtSecret: stack.jwtSecret,
    databaseUrl: stack.databaseUrl,
    adminDatabaseUrl: stack.adminDatabaseUrl,
    authAdminDatabaseUrl: stack.authAdminDatabaseUrl,
  });
  return async function teardown() {
    await stack.stop();
    await rm(dataDir, { recursive: true, force: true });
  };
}
