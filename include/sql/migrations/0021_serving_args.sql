-- What each pipeline's application serves now (`serving.deploy.deploy`): its versions, weights,
-- shadow, canary state and batching, numbered by `generation`. The ingress replicas follow this
-- row (LISTEN mlcycle_serving_args) and apply a new generation in place, so a weight change never
-- goes through Serve's reconfigure (which takes a replica out of HAProxy's backend for a moment);
-- `layout` fingerprints what only a Serve redeploy can change (replicas, resources, the serving
-- code), and a replica follows only rows of its own layout. Written by the platform's role (steps,
-- the API, the CLI); the serving role reads it (and NOTIFYs on mlcycle_serving_applied).
CREATE TABLE IF NOT EXISTS serving_args (
    pipeline    text        PRIMARY KEY,
    generation  bigint      NOT NULL CHECK (generation > 0),
    layout      text        NOT NULL,
    args        jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlcycle_serving') THEN
        GRANT SELECT ON serving_args TO mlcycle_serving;
    END IF;
END
$$;
