SELECT
    payload->>'id'                                             AS subscription_id,
    'stripe'                                                   AS platform,
    payload->>'id' AS platform_subscription_id,
    payload->>'customer'                                       AS customer_id,
    payload->>'status'                                         AS status,
    lower(payload->>'currency')                                AS currency,
    payload->>'$.metadata.plan'                                AS plan,
    to_timestamp(CAST(payload->>'start_date' AS BIGINT))       AS started_at,
    to_timestamp(CAST(payload->>'billing_cycle_anchor' AS BIGINT)) AS billing_cycle_anchor,
    to_timestamp(CAST(payload->'items'->'data'->0->>'current_period_start' AS BIGINT)) AS current_period_start,
    to_timestamp(CAST(payload->'items'->'data'->0->>'current_period_end' AS BIGINT))   AS current_period_end,
    to_timestamp(CAST(payload->>'canceled_at' AS BIGINT))      AS canceled_at,
    to_timestamp(CAST(payload->>'ended_at' AS BIGINT))         AS ended_at,
    CAST(payload->>'$.metadata.minimum_commitment' AS BIGINT)  AS minimum_commitment,
    payload->'metadata'                                        AS metadata,
    to_timestamp(CAST(payload->>'created' AS BIGINT))          AS created_at
FROM raw.stripe_subscriptions
