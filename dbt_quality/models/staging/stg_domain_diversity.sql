select domain, n, mean_pairwise_cosine_distance, distinct_1, distinct_2, clusters, diversity_threshold
from {{ source('synth', 'domain_diversity') }}
