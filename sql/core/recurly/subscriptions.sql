-- core.subscriptions: the merchant's id is the subscription custom field merchant_ref (Recurly mints id).
-- An expired subscription ended (Stripe's canceled); a canceled one still runs to its term end.
SELECT
    coalesce(list_filter(CAST(payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'merchant_ref')[1]->>'value',
             payload->>'id')                                        AS subscription_id,
    'recurly'                                                       AS platform,
    payload->>'id'                                                  AS platform_subscription_id,
    payload->>'$.account.code'                                     AS customer_id,
    CASE payload->>'state' WHEN 'expired' THEN 'canceled' WHEN 'canceled' THEN 'active' WHEN 'in_trial' THEN 'trialing'
                           WHEN 'future' THEN 'incomplete' ELSE payload->>'state' END AS status,
    lower(payload->>'currency')                                     AS currency,
    list_filter(CAST(payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'plan')[1]->>'value' AS plan,
    CAST(payload->>'activated_at' AS TIMESTAMPTZ)                   AS started_at,
    CAST(payload->>'activated_at' AS TIMESTAMPTZ)                   AS billing_cycle_anchor,
    CAST(payload->>'current_period_started_at' AS TIMESTAMPTZ)      AS current_period_start,
    CAST(payload->>'current_period_ends_at' AS TIMESTAMPTZ)         AS current_period_end,
    CAST(payload->>'canceled_at' AS TIMESTAMPTZ)                    AS canceled_at,
    CASE WHEN payload->>'state' = 'expired' THEN CAST(payload->>'expires_at' AS TIMESTAMPTZ) END AS ended_at,
    CAST(list_filter(CAST(payload->'custom_fields' AS JSON[]),
                     lambda f: f->>'name' = 'minimum_commitment')[1]->>'value' AS BIGINT) AS minimum_commitment,
    (SELECT json_group_object(f->>'name', f->>'value')
       FROM (SELECT unnest(CAST(payload->'custom_fields' AS JSON[])) AS f) WHERE f->>'name' <> 'merchant_ref') AS metadata,
    CAST(payload->>'created_at' AS TIMESTAMPTZ)                     AS created_at
FROM raw.recurly_subscriptions
