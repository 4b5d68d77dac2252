select domain, example_id, cell_id, seed_id, problem, complexity, generator_model, prompt_hash,
       consensus, consensus_threshold, validator_spread, len(validator_scores) as validators_used,
       len(validator_scores) > 0 as judged,
       validators_skipped, example_json, dedup_key, spec_version, cast(validated_at as timestamp) as validated_at
from {{ source('synth', 'validated_examples') }}
