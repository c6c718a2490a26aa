import type { ChildProcess } from 'node:child_process';

/**
 * A child server that never outlives the process that started it, however that
 * process ends: an exit from a signal handler (the TypeScript loader's) can come
 * before the asynchronous stop that would have ended the child has run.
 */
export function killWithParent(child: ChildProcess): void {
  const orphaned = () => child.kill('SIGKILL');
  process.once('exit', orphaned);
  child.once('exit', () => process.off('exit', orphaned));
}
