-- Placeholder for the number another branch takes (tenants / batches): drop at merge.
SELECT 1;
