DROP TABLE rate_windows;
DROP TABLE turn_leases;
