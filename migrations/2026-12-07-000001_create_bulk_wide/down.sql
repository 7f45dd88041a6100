DROP TABLE bulk_wide;
