select domain, example_id, cell_id, status, generator_model, prompt_hash, prompt_tokens, completion_tokens,
       cost_usd, latency_s, cache_hit, cast(created_at as timestamp) as created_at
from {{ source('synth', 'raw_generations') }}
