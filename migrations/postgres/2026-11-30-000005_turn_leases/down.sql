DROP TABLE turn_leases;
