select domain, asset, run_id, recorded_at, units, fresh_units, model_calls, probe_calls, cache_hits,
       billed_tokens, cost_usd, wall_s, planned_calls, planned_tokens, planned_cost_usd
from {{ source('synth', 'llm_usage') }}
