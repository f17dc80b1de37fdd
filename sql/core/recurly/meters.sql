-- core.meters from Recurly measured units (Recurly mints their id: it is the canonical meter id); the
-- aggregation is the usage calculation of the add-ons that use the unit.
SELECT
    m.payload->>'id'                                   AS meter_id,
    'recurly'                                          AS platform,
    m.payload->>'id'                                   AS platform_meter_id,
    m.payload->>'name'                                 AS meter_name,
    m.payload->>'display_name'                         AS display_name,
    coalesce((SELECT CASE any_value(x.payload->>'usage_calculation_type') WHEN 'last_in_period' THEN 'last'
                                                                          ELSE 'sum' END
                FROM raw.recurly_add_ons x WHERE x.payload->>'measured_unit_id' = m.payload->>'id'), 'sum') AS aggregation,
    m.payload->>'state'                                AS status
FROM raw.recurly_measured_units m
