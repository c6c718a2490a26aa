-- What an operator writes about a grant stays the operator's.
--
-- operator_grant_credits (20261127000800) put the operator's note and their
-- email into the ledger row's note ('<note> (by operator <email>)'), and a
-- customer reads their own credit_ledger rows, note included: "internal:
-- suspected card testing, watch this one (by operator ops@…)" was the
-- customer's to read. The console asked for the note as "kept in the ledger
-- and the audit log", without saying the customer would see it.
--
-- Now the ledger row says only that the operator granted or debited credits;
-- the note and who wrote it are in the audit log (the grant_credits or
-- debit_credits entry, and the ledger row's own entry with the operator as its
-- actor), which only operators read. Ledger rows written before this stay as
-- they are: the ledger is append-only.
--
-- Redefined whole; what changed: the ledger note. Everything else as before.
create or replace function public.operator_grant_credits(p_account_id uuid, p_amount bigint, p_note text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  perform private.require_operator();
  if p_note is null or length(trim(p_note)) = 0 then
    raise exception 'say why: a note is required' using errcode = '22023';
  end if;
  v_result := public.grant_credits(p_account_id, p_amount, case when p_amount < 0 then 'adjustment' else 'grant' end, null,
                                   case when p_amount < 0 then 'credits debited by the operator' else 'credits granted by the operator' end);
  perform private.audit(case when p_amount < 0 then 'debit_credits' else 'grant_credits' end, p_account_id::text,
                        jsonb_build_object('amount', p_amount, 'note', trim(p_note), 'entry_id', v_result -> 'entry_id', 'balance', v_result -> 'balance'));
  return v_result;
end;
$$;
