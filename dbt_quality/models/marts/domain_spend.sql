-- Per domain: what its runs spent on models, how much the cache saved, and how close synth plan came.
select domain,
       count(distinct run_id) as runs,
       sum(model_calls) as model_calls,
       sum(cache_hits) as cache_hits,
       sum(cache_hits) / nullif(sum(model_calls - probe_calls + cache_hits), 0) as cache_hit_rate,
       sum(billed_tokens) as billed_tokens,
       sum(cost_usd) as cost_usd,
       sum(wall_s) as model_asset_seconds,
       count(*) filter (where planned_calls is not null) as planned_asset_runs,
       -- Over the asset runs a plan was saved for: |planned - actual| / actual, calls and dollars.
       avg(abs(planned_calls - model_calls) / nullif(model_calls, 0))
           filter (where planned_calls is not null) as plan_calls_abs_error,
       avg(abs(planned_cost_usd - cost_usd) / nullif(cost_usd, 0))
           filter (where planned_cost_usd is not null) as plan_cost_abs_error,
       max(recorded_at) as last_recorded_at
from {{ ref('stg_llm_usage') }}
group by domain
