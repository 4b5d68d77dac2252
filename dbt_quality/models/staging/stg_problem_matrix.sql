select domain, cell_id, complexity, seed_id, target, weak, conditions_json
from {{ source('synth', 'problem_matrix') }}
