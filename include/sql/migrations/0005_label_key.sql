-- A label's real key: two labels of one entity observed at the same instant are two outcomes when
-- they answer different requests (one entity, two predictions, one batch of outcomes). The key is
-- (pipeline, entity, instant, request), a missing request counting as one value.
ALTER TABLE labels ADD COLUMN IF NOT EXISTS request_key uuid
    GENERATED ALWAYS AS (COALESCE(request_id, '00000000-0000-0000-0000-000000000000'::uuid)) STORED;
ALTER TABLE labels DROP CONSTRAINT IF EXISTS labels_pkey;
ALTER TABLE labels ADD CONSTRAINT labels_pkey PRIMARY KEY (pipeline, entity_id, observed_at, request_key);
