select domain, example_id, cell_id, fail_stage, fail_reasons, consensus
from {{ source('synth', 'rejected_examples') }}
