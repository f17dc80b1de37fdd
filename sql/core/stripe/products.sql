SELECT
    payload->>'id'                                    AS product_id,
    'stripe'                                          AS platform,
    payload->>'id' AS platform_product_id,
    payload->>'name'                                  AS name,
    payload->>'$.metadata.component'                  AS component,
    CAST(payload->>'active' AS BOOLEAN)               AS active,
    to_timestamp(CAST(payload->>'created' AS BIGINT)) AS created_at
FROM raw.stripe_products
