-- Every domain's embeddings are at least as diverse as its spec requires.
select domain, mean_pairwise_cosine_distance, diversity_threshold
from {{ ref('stg_domain_diversity') }}
where mean_pairwise_cosine_distance < diversity_threshold
