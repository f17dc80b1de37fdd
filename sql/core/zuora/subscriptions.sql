-- core.subscriptions: subscription_id = subscriptionNumber. Exact instants come from the integration's
-- custom fields (*_at__c); without them, Zuora's day-granular dates at midnight UTC.
SELECT
    s.payload->>'subscriptionNumber'                           AS subscription_id,
    'zuora'                                                    AS platform,
    s.payload->>'id'                                           AS platform_subscription_id,
    s.payload->>'accountNumber'                                AS customer_id,
    CASE s.payload->>'status' WHEN 'Active' THEN 'active' WHEN 'Cancelled' THEN 'canceled'
         WHEN 'Suspended' THEN 'paused' ELSE lower(s.payload->>'status') END AS status,
    lower(coalesce(s.payload->>'currency', s.payload->'ratePlans'->0->'ratePlanCharges'->0->>'currency')) AS currency,
    s.payload->>'plan__c'                                      AS plan,
    coalesce(CAST(s.payload->>'started_at__c' AS TIMESTAMPTZ),
             CAST(CAST(s.payload->>'subscriptionStartDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS started_at,
    coalesce(CAST(s.payload->>'billing_cycle_anchor_at__c' AS TIMESTAMPTZ),
             CAST(CAST(s.payload->>'termStartDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS billing_cycle_anchor,
    CAST(s.payload->>'current_period_start_at__c' AS TIMESTAMPTZ) AS current_period_start,
    CAST(s.payload->>'current_period_end_at__c' AS TIMESTAMPTZ)   AS current_period_end,
    coalesce(CAST(s.payload->>'cancelled_at__c' AS TIMESTAMPTZ),
             CAST(CAST(s.payload->>'cancelledDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS canceled_at,
    coalesce(CAST(s.payload->>'cancelled_at__c' AS TIMESTAMPTZ),
             CAST(CAST(s.payload->>'cancelledDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS ended_at,
    CAST(s.payload->>'minimum_commitment__c' AS BIGINT)        AS minimum_commitment,
    -- the merchant's custom fields without "__c" (not the integration's instants, *_at__c)
    (SELECT json_group_object(regexp_replace(k, '__c$', ''), s.payload->>k)
       FROM (SELECT unnest(json_keys(s.payload)) AS k)
      WHERE k LIKE '%\_\_c' ESCAPE '\' AND s.payload->>k IS NOT NULL
        AND k NOT LIKE '%\_at\_\_c' ESCAPE '\') AS metadata,
    CAST(s.payload->>'createdDate' AS TIMESTAMPTZ)             AS created_at
FROM raw.zuora_subscriptions s
