-- Per-domain quality: counts, pass rate, consensus, diversity, cost and last run.
with raw as (
    select domain, count(*) as generated, count(*) filter (where status = 'ok') as generated_ok,
           sum(cost_usd) as cost_usd, sum(prompt_tokens + completion_tokens) as tokens, max(created_at) as last_generated_at
    from {{ ref('stg_raw_generations') }} group by domain
),
accepted as (
    select domain, count(*) as accepted, avg(consensus) as mean_consensus, max(validated_at) as last_validated_at
    from {{ ref('stg_validated_examples') }} group by domain
),
rejected as (
    select domain, count(*) as rejected,
           -- validation/gates.py judged_pass_rate: judged = accepted + consensus + near_duplicate
           -- rejects; passed = accepted + near_duplicate rejects (they met the threshold).
           count(*) filter (where fail_stage in ('consensus', 'near_duplicate')) as rejected_after_judging,
           count(*) filter (where fail_stage = 'near_duplicate') as judged_passed_then_dropped
    from {{ ref('stg_rejected_examples') }} group by domain
),
program as (
    select domain, arg_max(score, recorded_at) as program_score
    from {{ ref('stg_agent_performance') }} where source = 'compiled_program' group by domain
)
select s.domain, s.name, s.training_format,
       coalesce(raw.generated, 0) as generated,
       coalesce(accepted.accepted, 0) as accepted,
       coalesce(rejected.rejected, 0) as rejected,
       coalesce(accepted.accepted, 0) / nullif(raw.generated, 0) as pass_rate,
       (coalesce(accepted.accepted, 0) + coalesce(rejected.judged_passed_then_dropped, 0))
           / nullif(coalesce(accepted.accepted, 0) + coalesce(rejected.rejected_after_judging, 0), 0) as consensus_pass_rate,
       accepted.mean_consensus, s.consensus_threshold, s.min_pass_rate,
       d.mean_pairwise_cosine_distance as diversity, d.clusters as semantic_clusters, s.diversity_threshold,
       program.program_score, raw.cost_usd, raw.tokens,
       greatest(raw.last_generated_at, accepted.last_validated_at) as last_run_at
from {{ ref('stg_domain_specs') }} s
left join raw using (domain)
left join accepted using (domain)
left join rejected using (domain)
left join {{ ref('stg_domain_diversity') }} d using (domain)
left join program using (domain)
