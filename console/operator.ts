import type { SupabaseClient } from '@supabase/supabase-js';
import { el } from './format.ts';

// The operator's page (users whose app_metadata.role is admin, checked in SQL).
export function operatorView(_supabase: SupabaseClient): HTMLElement[] {
  return [el('section', { id: 'operator' }, el('h2', {}, 'Operator'), el('p', { class: 'note' }, 'The operator page is not built yet.'))];
}
