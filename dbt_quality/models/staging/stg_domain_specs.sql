select domain, name, version, type, description, training_format, target_count,
       consensus_threshold, min_pass_rate, diversity_threshold, program_inputs, program_outputs, file_sha256
from {{ source('synth', 'domain_specs') }}
