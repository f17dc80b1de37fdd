-- core.subscription_items: every rate plan charge of every subscription; Zuora keeps removed rate plans
-- (lastChangeType = 'Remove') with their effective dates, so replaced items need no reconstruction.
-- subscription_item_id = the charge number (merchant-settable); validity from the exact instants the
-- integration keeps (effective_*_at__c), else Zuora's effective dates; an open charge of a cancelled
-- subscription ends with it.
WITH ch AS (
    SELECT s.payload AS sub, r.rp, x.c
    FROM raw.zuora_subscriptions s,
         LATERAL (SELECT unnest(CAST(s.payload->'ratePlans' AS JSON[])) AS rp) r,
         LATERAL (SELECT unnest(CAST(r.rp->'ratePlanCharges' AS JSON[])) AS c) x
)
SELECT
    ch.c->>'number'                                            AS subscription_item_id,
    'zuora'                                                    AS platform,
    ch.c->>'id'                                                AS platform_subscription_item_id,
    ch.sub->>'subscriptionNumber'                              AS subscription_id,
    ch.sub->>'accountNumber'                                   AS customer_id,
    coalesce(p.payload->>'price_id__c', ch.c->>'productRatePlanChargeId') AS price_id,
    CASE WHEN ch.c->>'type' = 'Usage' THEN coalesce(p.payload->>'meter_id__c', u.payload->>'id') END AS meter_id,
    CASE WHEN ch.c->>'type' = 'Usage' THEN ch.c->>'uom' END    AS meter_name,
    CASE ch.c->>'type' WHEN 'Usage' THEN 'metered' ELSE 'licensed' END AS usage_type,
    CAST(CAST(ch.c->>'quantity' AS DECIMAL(38, 9)) AS BIGINT)  AS quantity,
    coalesce(CAST(ch.c->>'effective_start_at__c' AS TIMESTAMPTZ),
             CAST(CAST(ch.c->>'effectiveStartDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS valid_from,
    coalesce(CAST(ch.c->>'effective_end_at__c' AS TIMESTAMPTZ),
             CAST(CAST(ch.c->>'effectiveEndDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS valid_to,
    coalesce(ch.rp->>'lastChangeType', '') <> 'Remove'         AS is_current
FROM ch
LEFT JOIN raw.zuora_product_rate_plan_charges p ON p.payload->>'id' = ch.c->>'productRatePlanChargeId'
LEFT JOIN raw.zuora_units_of_measure u ON u.payload->>'uomName' = ch.c->>'uom'
