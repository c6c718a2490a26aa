import { defineConfig } from 'vitest/config';

// The coding agents (Claude Code, Codex CLI, Gemini CLI) against the gateway:
// a stage of its own, since the agents are large installs (.ci/run installs
// them into .local/agents).
export default defineConfig({
  test: {
    include: ['tests/agents/**/*.test.ts'],
    globalSetup: ['tests/support/global-setup.ts'],
    setupFiles: ['tests/support/check-invariants-after-each.ts'],
    reporters: ['default', './tests/support/summary-reporter.ts'],
    testTimeout: 180_000,
    hookTimeout: 120_000,
  },
});
