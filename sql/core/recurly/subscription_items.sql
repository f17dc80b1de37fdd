-- core.subscription_items: a subscription's current add-ons, plus add-ons a plan change replaced (Recurly
-- keeps those only on invoice lines, by add_on_id). Recurly mints subscription add-on ids: they are the
-- canonical item ids. Validity as for Stripe: a current add-on from its creation; a replaced one from the
-- subscription's activation until its replacement for the same item (product) was created, or the end.
WITH subs AS (
    SELECT payload,
           coalesce(list_filter(CAST(payload->'custom_fields' AS JSON[]),
                                lambda f: f->>'name' = 'merchant_ref')[1]->>'value', payload->>'id') AS subscription_id,
           CASE WHEN payload->>'state' = 'expired' THEN CAST(payload->>'expires_at' AS TIMESTAMPTZ) END AS ended_at
    FROM raw.recurly_subscriptions
),
cur AS (
    SELECT
        a->>'id'                                         AS subscription_item_id,
        s.subscription_id,
        s.payload->>'$.account.code'                    AS customer_id,
        a->>'$.add_on.code'                             AS price_id,
        ao.payload->>'$.item.code'                      AS product_id,
        CASE WHEN ao.payload->>'add_on_type' = 'fixed' THEN CAST(a->>'quantity' AS BIGINT) END AS quantity,
        CAST(a->>'created_at' AS TIMESTAMPTZ)            AS valid_from,
        s.ended_at                                       AS valid_to,
        true                                             AS is_current
    FROM subs s,
         LATERAL (SELECT unnest(CAST(s.payload->'add_ons' AS JSON[])) AS a)
    LEFT JOIN raw.recurly_add_ons ao ON ao.payload->>'code' = a->>'$.add_on.code'
),
past_lines AS (
    SELECT
        l.payload->>'add_on_id'                                             AS subscription_item_id,
        l.payload->>'subscription_id'                                       AS platform_subscription_id,
        any_value(l.payload->>'add_on_code')                                AS price_id,
        max(CASE WHEN l.payload->>'proration_rate' IS NOT NULL THEN NULL
                 ELSE CAST(coalesce(l.payload->>'quantity_decimal', l.payload->>'quantity') AS DECIMAL(38, 9)) END)
                                                                            AS quantity
    FROM raw.recurly_line_items l
    WHERE l.payload->>'origin' = 'add_on' AND l.payload->>'add_on_id' IS NOT NULL
    GROUP BY ALL
),
past AS (
    SELECT
        pl.subscription_item_id,
        s.subscription_id,
        s.payload->>'$.account.code'                    AS customer_id,
        pl.price_id,
        ao.payload->>'$.item.code'                      AS product_id,
        CASE WHEN ao.payload->>'add_on_type' = 'fixed' THEN CAST(pl.quantity AS BIGINT) END AS quantity,
        CAST(s.payload->>'activated_at' AS TIMESTAMPTZ)  AS valid_from,
        coalesce(
            (SELECT min(c.valid_from) FROM cur c
              WHERE c.subscription_id = s.subscription_id AND c.product_id = ao.payload->>'$.item.code'),
            s.ended_at)                                  AS valid_to,
        false                                            AS is_current
    FROM past_lines pl
    JOIN subs s ON s.payload->>'id' = pl.platform_subscription_id
    LEFT JOIN raw.recurly_add_ons ao ON ao.payload->>'code' = pl.price_id
    WHERE pl.subscription_item_id NOT IN (SELECT subscription_item_id FROM cur)
)
SELECT
    x.subscription_item_id, 'recurly' AS platform, x.subscription_item_id AS platform_subscription_item_id,
    x.subscription_id, x.customer_id, x.price_id,
    ao.payload->>'measured_unit_id'                    AS meter_id,
    m.payload->>'name'                                 AS meter_name,
    CASE ao.payload->>'add_on_type' WHEN 'usage' THEN 'metered' ELSE 'licensed' END AS usage_type,
    x.quantity, x.valid_from, x.valid_to, x.is_current
FROM (SELECT * FROM cur UNION ALL SELECT * FROM past) x
LEFT JOIN raw.recurly_add_ons ao ON ao.payload->>'code' = x.price_id
LEFT JOIN raw.recurly_measured_units m ON m.payload->>'id' = ao.payload->>'measured_unit_id'
