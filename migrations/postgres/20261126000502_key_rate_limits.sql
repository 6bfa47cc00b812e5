-- A per-key rate limit, in requests per minute; NULL means `rate_limit.requests_per_minute`.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_minute INTEGER CHECK (rate_limit_per_minute > 0);
