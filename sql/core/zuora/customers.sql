-- core.customers from Zuora accounts (Object Query, bill-to contact expanded; names and e-mails arrive tokenized).
-- customer_id = accountNumber (merchant-set); metadata = the account's custom fields without "__c".
SELECT
    a.payload->>'accountNumber'                                AS customer_id,
    'zuora'                                                    AS platform,
    a.payload->>'id'                                           AS platform_customer_id,
    a.payload->>'name'                                         AS name_token,
    a.payload->'billTo'->>'workEmail'                          AS email_token,
    a.payload->>'segment__c'                                   AS segment,
    a.payload->>'region__c'                                    AS region,
    lower(a.payload->>'currency')                              AS currency,
    a.payload->>'success_manager__c'                           AS success_manager,
    coalesce(a.payload->>'email_opt_out__c' = 'true', false)   AS email_opt_out,
    -- Zuora's credit balance is the customer's credit (positive); core balance is negative for a credit
    CAST(-coalesce(CAST(a.payload->>'creditBalance_minor' AS BIGINT), 0) AS BIGINT) AS balance,
    false                                                      AS delinquent,  -- Zuora has no such flag
    CAST(a.payload->>'createdDate' AS TIMESTAMPTZ)             AS created_at,
    (SELECT json_group_object(regexp_replace(k, '__c$', ''), a.payload->>k)
       FROM (SELECT unnest(json_keys(a.payload)) AS k)
      WHERE k LIKE '%\_\_c' ESCAPE '\' AND a.payload->>k IS NOT NULL)  AS metadata,
    a.landed_at
FROM raw.zuora_accounts a
