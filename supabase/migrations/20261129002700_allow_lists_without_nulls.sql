-- Keys whose allow-list was stored with a null among its model names.
--
-- Before 20261129001900 a policy could store allowed_models with a null in it,
-- and `model = any (allowed_models)` is then null for every model not named:
-- such a key refused no model at all. New policies cannot do that any more;
-- this takes the nulls out of those already stored, so each key is limited to
-- the models it names, as its owner asked. (allowed_ips is cast to cidr, which
-- refused a null before; array_agg never stored an empty list.)

update public.api_keys
   set allowed_models = array_remove(allowed_models, null)
 where array_position(allowed_models, null) is not null;
