/**
 * How deep a request body may nest arrays and objects. Real requests stay far
 * below (a tool's JSON schema nests a few dozen levels at most); much deeper
 * nesting makes JSON.stringify overflow the stack when the upstream request is
 * built, after the hold was taken.
 */
export const maxJsonNesting = 128;

const openBrace = 0x7b;
const closeBrace = 0x7d;
const openBracket = 0x5b;
const closeBracket = 0x5d;
const quote = 0x22;
const backslash = 0x5c;

/** True when `text` nests arrays and objects deeper than `limit`; one pass, strings skipped. */
export function jsonNestingExceeds(text: string, limit: number): boolean {
  let depth = 0;
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index);
    if (code === quote) {
      // Skip the string, escapes included.
      for (index++; index < text.length; index++) {
        const inner = text.charCodeAt(index);
        if (inner === backslash) index++;
        else if (inner === quote) break;
      }
    } else if (code === openBrace || code === openBracket) {
      if (++depth > limit) return true;
    } else if (code === closeBrace || code === closeBracket) {
      depth--;
    }
  }
  return false;
}
