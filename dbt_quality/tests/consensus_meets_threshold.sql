-- Every accepted example met its domain's consensus threshold when it was judged.
select example_id, domain, consensus, consensus_threshold
from {{ ref('stg_validated_examples') }}
where consensus < consensus_threshold - 1e-9
