-- core.products from the Zuora catalog: product_id = sku (merchant-set).
SELECT
    payload->>'sku'                                   AS product_id,
    'zuora'                                           AS platform,
    payload->>'id'                                    AS platform_product_id,
    payload->>'name'                                  AS name,
    payload->>'component__c'                          AS component,
    coalesce(CAST(payload->>'effectiveEndDate' AS DATE) >= CAST(landed_at AS DATE), true) AS active,
    CAST(payload->>'createdDate' AS TIMESTAMPTZ)      AS created_at
FROM raw.zuora_products
