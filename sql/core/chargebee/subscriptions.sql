-- core.subscriptions from Chargebee subscriptions. Chargebee renews on the day the subscription started, so
-- the billing cycle anchor is started_at; a subscription set to cancel (non_renewing) is still active.
-- meta_data.billing_ai_items is the merchant's map of subscription item ids (see subscription_items.sql),
-- not business metadata: it is left out of the metadata column.
SELECT
    payload->>'id'                                             AS subscription_id,
    'chargebee'                                                AS platform,
    payload->>'id'                                             AS platform_subscription_id,
    payload->>'customer_id'                                    AS customer_id,
    CASE payload->>'status' WHEN 'cancelled' THEN 'canceled' WHEN 'non_renewing' THEN 'active'
                            WHEN 'in_trial' THEN 'trialing' ELSE payload->>'status' END AS status,
    lower(payload->>'currency_code')                           AS currency,
    payload->>'$.meta_data.plan'                               AS plan,
    to_timestamp(CAST(payload->>'started_at' AS BIGINT))       AS started_at,
    to_timestamp(CAST(payload->>'started_at' AS BIGINT))       AS billing_cycle_anchor,
    to_timestamp(CAST(payload->>'current_term_start' AS BIGINT)) AS current_period_start,
    to_timestamp(CAST(payload->>'current_term_end' AS BIGINT))   AS current_period_end,
    to_timestamp(CAST(payload->>'cancelled_at' AS BIGINT))     AS canceled_at,
    to_timestamp(CAST(payload->>'cancelled_at' AS BIGINT))     AS ended_at,
    CAST(payload->>'$.meta_data.minimum_commitment' AS BIGINT) AS minimum_commitment,
    json_merge_patch(payload->'meta_data', '{"billing_ai_items": null}') AS metadata,
    to_timestamp(CAST(payload->>'created_at' AS BIGINT))       AS created_at
FROM raw.chargebee_subscriptions
