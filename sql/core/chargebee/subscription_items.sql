-- core.subscription_items. Chargebee subscription items have no ids: the merchant's id of each item is in the
-- subscription's meta_data.billing_ai_items (item price -> {"id", "created"}); the platform's own key is
-- "<subscription>:<item price>". As on Stripe, a subscription shows its current items only, and items a plan
-- change replaced survive on invoice lines. Validity: a current item from its creation; a replaced item from
-- the subscription's start until its replacement for the same item (product) was created, or until the
-- subscription ended. A licensed line whose service period does not start on its invoice's date is a
-- mid-term (prorated) charge.
WITH catalog AS (
    SELECT ip.payload->>'id' AS price_id, ip.payload->>'item_id' AS product_id,
           it.payload->>'$.metadata.meter_id' AS meter_id, it.payload->>'$.metadata.meter_event_name' AS meter_name,
           CASE WHEN CAST(it.payload->>'metered' AS BOOLEAN) THEN 'metered' ELSE 'licensed' END AS usage_type
    FROM raw.chargebee_item_prices ip
    LEFT JOIN raw.chargebee_items it ON it.payload->>'id' = ip.payload->>'item_id'
),
cur AS (
    SELECT
        coalesce(json_extract_string(s.payload, '$.meta_data.billing_ai_items."' || (e->>'item_price_id') || '".id'),
                 (s.payload->>'id') || ':' || (e->>'item_price_id'))                   AS subscription_item_id,
        (s.payload->>'id') || ':' || (e->>'item_price_id')                            AS platform_subscription_item_id,
        s.payload->>'id'                            AS subscription_id,
        s.payload->>'customer_id'                   AS customer_id,
        e->>'item_price_id'                         AS price_id,
        c.product_id,
        CAST(e->>'quantity' AS BIGINT)              AS quantity,
        to_timestamp(CAST(coalesce(json_extract_string(s.payload, '$.meta_data.billing_ai_items."' || (e->>'item_price_id') || '".created'),
                                   s.payload->>'started_at') AS BIGINT)) AS valid_from,
        to_timestamp(CAST(s.payload->>'cancelled_at' AS BIGINT)) AS valid_to,
        true                                        AS is_current
    FROM raw.chargebee_subscriptions s,
         LATERAL (SELECT unnest(CAST(s.payload->'subscription_items' AS JSON[])) AS e)
    LEFT JOIN catalog c ON c.price_id = e->>'item_price_id'
),
lines AS (
    SELECT
        l.payload->>'subscription_id'               AS subscription_id,
        l.payload->>'entity_id'                     AS price_id,
        CAST(l.payload->>'quantity' AS BIGINT)      AS quantity,
        NOT coalesce(CAST(l.payload->>'metered' AS BOOLEAN), false)
            AND l.payload->>'date_from' IS DISTINCT FROM i.payload->>'date' AS is_proration
    FROM raw.chargebee_invoice_line_items l
    LEFT JOIN raw.chargebee_invoices i ON i.payload->>'id' = l.payload->>'invoice_id'
    WHERE l.payload->>'entity_type' IN ('plan_item_price', 'addon_item_price')
),
past_lines AS (
    SELECT
        coalesce(json_extract_string(s.payload, '$.meta_data.billing_ai_items."' || l.price_id || '".id'),
                 l.subscription_id || ':' || l.price_id)                AS subscription_item_id,
        l.subscription_id,
        any_value(l.price_id)                                           AS price_id,
        any_value(l.subscription_id || ':' || l.price_id)               AS platform_subscription_item_id,
        max(CASE WHEN l.is_proration THEN NULL ELSE l.quantity END)     AS quantity
    FROM lines l
    JOIN raw.chargebee_subscriptions s ON s.payload->>'id' = l.subscription_id
    GROUP BY ALL
),
past AS (
    SELECT
        pl.subscription_item_id,
        pl.platform_subscription_item_id,
        pl.subscription_id,
        s.payload->>'customer_id'                             AS customer_id,
        pl.price_id,
        c.product_id,
        CASE WHEN c.usage_type = 'licensed' THEN pl.quantity END AS quantity,
        to_timestamp(CAST(s.payload->>'started_at' AS BIGINT)) AS valid_from,
        coalesce(
            (SELECT min(x.valid_from) FROM cur x
              WHERE x.subscription_id = pl.subscription_id AND x.product_id = c.product_id),
            to_timestamp(CAST(s.payload->>'cancelled_at' AS BIGINT)))  AS valid_to,
        false                                                 AS is_current
    FROM past_lines pl
    JOIN raw.chargebee_subscriptions s ON s.payload->>'id' = pl.subscription_id
    LEFT JOIN catalog c ON c.price_id = pl.price_id
    WHERE pl.subscription_item_id NOT IN (SELECT subscription_item_id FROM cur)
)
SELECT
    x.subscription_item_id, 'chargebee' AS platform, x.platform_subscription_item_id,
    x.subscription_id, x.customer_id, x.price_id,
    c.meter_id, c.meter_name, c.usage_type,
    x.quantity, x.valid_from, x.valid_to, x.is_current
FROM (SELECT * FROM cur UNION ALL BY NAME SELECT * FROM past) x
LEFT JOIN catalog c ON c.price_id = x.price_id
