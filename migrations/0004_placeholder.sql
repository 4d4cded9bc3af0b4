-- Placeholder for the number another branch takes (tenants / rebuild): drop at merge.
SELECT 1;
