-- Training-ready SFT rows: one chat per validated example (system = domain description,
-- user = program inputs, assistant = program outputs, each rendered as "field: value" lines).
with examples as (
    select v.domain, v.example_id, v.consensus, v.example_json, s.description, s.program_inputs, s.program_outputs
    from {{ ref('stg_validated_examples') }} v
    join {{ ref('stg_domain_specs') }} s using (domain)
),
rendered as (
    select domain, example_id, consensus, description,
           list_aggregate(list_transform(program_inputs, lambda f: f || ': ' || coalesce(json_extract_string(example_json, '$.' || f), '')), 'string_agg', chr(10)) as user_content,
           list_aggregate(list_transform(program_outputs, lambda f: f || ': ' || coalesce(json_extract_string(example_json, '$.' || f), '')), 'string_agg', chr(10)) as assistant_content
    from examples
)
select domain, example_id, consensus,
       [{'role': 'system', 'content': description},
        {'role': 'user', 'content': user_content},
        {'role': 'assistant', 'content': assistant_content}] as messages
from rendered
