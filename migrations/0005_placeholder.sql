-- Placeholder for the number another branch takes (batches): drop at merge.
SELECT 1;
