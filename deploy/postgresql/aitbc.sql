-- PostgreSQL for AITBC's web tier (run as the postgres superuser):  psql -f aitbc.sql
CREATE ROLE aitbc LOGIN PASSWORD 'CHANGE-ME';
CREATE DATABASE aitbc OWNER aitbc ENCODING 'UTF8' TEMPLATE template0;
-- Every process opens its own connections (no pooling: CONN_MAX_AGE 0); see postgresql.conf.
