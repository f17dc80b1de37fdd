-- core.subscription_items: current items from the subscription, plus items a
-- plan change replaced (Stripe keeps those only on invoice lines). Validity:
-- a current item from its creation; a replaced item from the subscription's
-- start (or its first invoiced period) until its replacement for the same
-- product was created, or until the subscription ended.
WITH cur AS (
    SELECT
        it->>'id'                                   AS subscription_item_id,
        s.payload->>'id'                            AS subscription_id,
        s.payload->>'customer'                      AS customer_id,
        it->'price'->>'id'                          AS price_id,
        it->'price'->>'product'                     AS product_id,
        CAST(it->>'quantity' AS BIGINT)             AS quantity,
        to_timestamp(CAST(it->>'created' AS BIGINT)) AS valid_from,
        to_timestamp(CAST(s.payload->>'ended_at' AS BIGINT)) AS valid_to,
        true                                        AS is_current
    FROM raw.stripe_subscriptions s,
         LATERAL (SELECT unnest(CAST(s.payload->'items'->'data' AS JSON[])) AS it)
),
past_lines AS (
    SELECT
        l.payload->>'$.parent.subscription_item_details.subscription_item' AS subscription_item_id,
        l.payload->>'$.parent.subscription_item_details.subscription'       AS subscription_id,
        any_value(l.payload->>'$.pricing.price_details.price')              AS price_id,
        min(CAST(l.payload->>'$.period.start' AS BIGINT))                   AS first_start,
        max(CASE WHEN CAST(l.payload->>'$.parent.subscription_item_details.proration' AS BOOLEAN)
                 THEN NULL ELSE CAST(l.payload->>'quantity' AS BIGINT) END) AS quantity
    FROM raw.stripe_invoice_lines l
    WHERE l.payload->>'$.parent.type' = 'subscription_item_details'
    GROUP BY ALL
),
past AS (
    SELECT
        pl.subscription_item_id,
        pl.subscription_id,
        s.payload->>'customer'                                AS customer_id,
        pl.price_id,
        p.payload->>'product'                                 AS product_id,
        CASE WHEN p.payload->>'$.recurring.usage_type' = 'licensed' THEN pl.quantity END AS quantity,
        to_timestamp(CAST(s.payload->>'start_date' AS BIGINT)) AS valid_from,
        coalesce(
            (SELECT min(c.valid_from) FROM cur c
              WHERE c.subscription_id = pl.subscription_id AND c.product_id = p.payload->>'product'),
            to_timestamp(CAST(s.payload->>'ended_at' AS BIGINT)))  AS valid_to,
        false                                                 AS is_current
    FROM past_lines pl
    JOIN raw.stripe_subscriptions s ON s.payload->>'id' = pl.subscription_id
    LEFT JOIN raw.stripe_prices p ON p.payload->>'id' = pl.price_id
    WHERE pl.subscription_item_id NOT IN (SELECT subscription_item_id FROM cur)
)
SELECT
    x.subscription_item_id, 'stripe' AS platform, x.subscription_item_id AS platform_subscription_item_id,
    x.subscription_id, x.customer_id, x.price_id,
    pr.payload->>'$.recurring.meter' AS meter_id,
    m.payload->>'event_name'         AS meter_name,
    pr.payload->>'$.recurring.usage_type' AS usage_type,
    x.quantity, x.valid_from, x.valid_to, x.is_current
FROM (SELECT * FROM cur UNION ALL SELECT * FROM past) x
LEFT JOIN raw.stripe_prices pr ON pr.payload->>'id' = x.price_id
LEFT JOIN raw.stripe_meters m ON m.payload->>'id' = pr.payload->>'$.recurring.meter'
