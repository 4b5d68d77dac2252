select domain, source, score, n, metric, run_id, recorded_at
from {{ source('synth', 'agent_performance') }}
